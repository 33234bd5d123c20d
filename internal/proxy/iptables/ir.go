package iptables

import (
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/xtables"
)

// Table is an iptables table.
type Table string

const (
	TableFilter Table = "filter"
	TableNAT    Table = "nat"
	TableMangle Table = "mangle"
)

// tables are the tables kdive writes, in the order a restore sends them
// (filter before nat, as upstream kube-proxy does).
var tables = []Table{TableFilter, TableNAT, TableMangle}

// MasqueradeMark is the packet-mark bit KUBE-MARK-MASQ sets and
// KUBE-POSTROUTING turns into a masquerade (upstream's default bit 14).
const MasqueradeMark = 0x4000

// Ruleset is the rendered desired state as Go values: what Render
// produces, what Sync programs, what Trace interprets and what `kdive show
// lb` prints. Text gives the exact iptables-restore input for its chains.
type Ruleset struct {
	// Top are kdive's shared chains (KUBE-SERVICES, KUBE-NODEPORTS,
	// KUBE-MARK-MASQ, ...), table by table, in restore order.
	Top []*Chain
	// Services are the service ports' own chains, sorted by name.
	Services []*ServiceChains
	// Hooks are the rules kdive inserts at the top of the built-in chains
	// (PREROUTING, OUTPUT, INPUT, ...) to jump into its chains, in their
	// order in the built-in chain.
	Hooks []*Chain
	// LocalIPs are the node's addresses: what `-m addrtype --src-type
	// LOCAL` matches besides 127.0.0.0/8 (for Trace; not part of the rules).
	LocalIPs []netip.Addr

	glob      globals
	indexOnce sync.Once
	index     map[chainKey]*Chain
}

// ServiceChains are the chains one service port owns (KUBE-SVC, KUBE-SVL,
// KUBE-EXT, KUBE-FW and KUBE-SEP, all in the nat table) and the rules it
// contributes to the shared chains.
type ServiceChains struct {
	Name   model.ServicePortName
	Chains []*Chain
	// top holds this port's rules in each shared chain that service ports
	// contribute to (indexed by topChain).
	top [numTopChains][]Rule
}

// Chain is a chain and its rules. For a built-in chain (in Ruleset.Hooks)
// the rules are only the ones kdive inserts.
type Chain struct {
	Table   Table
	Name    string
	Builtin bool
	Rules   []Rule
	// Service is the service port the chain belongs to; nil for shared
	// chains.
	Service *model.ServicePortName
}

type chainKey struct {
	table Table
	name  string
}

// Rule is one iptables rule (xtables.Rule, the model both iptables-writing
// modes share) with what the rule is about: the endpoint and the service
// port. The iptables mode writes its matches in the order upstream
// kube-proxy writes them (xtables.Rule.WriteKubeProxy).
type Rule struct {
	xtables.Rule
	// Endpoint is the endpoint the rule is about (the DNAT destination,
	// the endpoint a KUBE-SVC rule picks); zero for others.
	Endpoint netip.AddrPort
	// Service is the service port the rule implements; nil for kdive's
	// shared rules.
	Service *model.ServicePortName
}

// equal compares rules by value.
func (r Rule) equal(o Rule) bool {
	return r.Endpoint == o.Endpoint && r.Service == o.Service && r.Rule.Equal(o.Rule)
}

// Recent is session affinity (xtables.Recent).
type Recent = xtables.Recent

// Targets that are not chains.
const (
	targetAccept     = xtables.Accept
	targetDrop       = xtables.Drop
	targetReject     = xtables.Reject
	targetReturn     = xtables.Return
	targetDNAT       = xtables.DNAT
	targetMark       = xtables.Mark
	targetMasquerade = xtables.Masquerade
)

// Chain finds a chain by table and name: kdive's own chains, and the
// built-in chains as far as kdive's hooks go.
func (rs *Ruleset) Chain(t Table, name string) *Chain {
	rs.indexOnce.Do(func() {
		rs.index = map[chainKey]*Chain{}
		for _, c := range rs.Chains() {
			rs.index[chainKey{c.Table, c.Name}] = c
		}
		for _, c := range rs.Hooks {
			rs.index[chainKey{c.Table, c.Name}] = c
		}
	})
	return rs.index[chainKey{t, name}]
}

// Chains are all of kdive's chains (not the built-in ones), shared ones
// first.
func (rs *Ruleset) Chains() []*Chain {
	out := slices.Clone(rs.Top)
	for _, s := range rs.Services {
		out = append(out, s.Chains...)
	}
	return out
}

// Text is the iptables-restore input (for --noflush) that creates or
// replaces every kdive chain: filter, nat and mangle, each its own COMMIT.
// The jumps from the built-in chains (Hooks) are not in it: Sync inserts
// them where they are missing.
func (rs *Ruleset) Text() string {
	var b strings.Builder
	for _, t := range tables {
		var cs []*Chain
		for _, c := range rs.Chains() {
			if c.Table == t {
				cs = append(cs, c)
			}
		}
		writeTable(&b, t, cs, nil, nil, nil)
	}
	return b.String()
}

// writeTable writes one table's transaction: the chains to create or
// flush, their rules, the chains to delete and extra lines (hook inserts).
// written, when set, sees each chain's rule lines as written.
func writeTable(b *strings.Builder, t Table, write []*Chain, del []string, extra []string, written func(*Chain, string)) {
	if len(write) == 0 && len(del) == 0 && len(extra) == 0 {
		return
	}
	b.WriteString("*")
	b.WriteString(string(t))
	b.WriteByte('\n')
	for _, c := range write {
		writeChainLine(b, c.Name)
	}
	for _, name := range del {
		writeChainLine(b, name)
	}
	for _, c := range write {
		start := b.Len()
		c.appendRules(b)
		if written != nil {
			written(c, b.String()[start:])
		}
	}
	for _, name := range del {
		b.WriteString("-X ")
		b.WriteString(name)
		b.WriteByte('\n')
	}
	for _, l := range extra {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	b.WriteString("COMMIT\n")
}

func writeChainLine(b *strings.Builder, name string) {
	b.WriteByte(':')
	b.WriteString(name)
	b.WriteString(" - [0:0]\n")
}

// appendRules writes the chain's rules as -A lines.
func (c *Chain) appendRules(b *strings.Builder) {
	for i := range c.Rules {
		c.Rules[i].appendTo(b, "-A", c.Name)
		b.WriteByte('\n')
	}
}

// text is the chain's rules as restore lines, the unit Sync compares.
func (c *Chain) text() string {
	var b strings.Builder
	c.appendRules(&b)
	return b.String()
}

// appendTo writes "<cmd> <chain> <rule>" in iptables-restore syntax, as
// upstream writes it.
func (r *Rule) appendTo(b *strings.Builder, cmd, chain string) {
	if cmd != "" {
		b.WriteString(cmd)
		b.WriteByte(' ')
		b.WriteString(chain)
	}
	r.WriteKubeProxy(b)
}
