package iptables

import (
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/kdive/kdive/internal/model"
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

// Rule is one iptables rule. Matches are printed in a fixed order (comment,
// addrtype, recent, statistic, protocol, destination, port, source, mark,
// conntrack), which is the order upstream kube-proxy writes them in.
type Rule struct {
	Comment string
	// SrcType / DstType: "LOCAL" for `-m addrtype --src-type LOCAL`.
	SrcType, DstType string
	// Recent is `-m recent` (session affinity); nil for none.
	Recent *Recent
	// Probability is `-m statistic --mode random --probability`; 0 is none.
	Probability float64
	// Proto is "tcp", "udp" or "sctp" (`-m tcp -p tcp`); empty for any.
	Proto string
	// Dst and Src match addresses (zero: any); NotSrc negates Src.
	Dst    netip.Prefix
	DPort  uint16
	Src    netip.Prefix
	NotSrc bool
	// Mark matches `-m mark --mark Mark/Mark` (negated with NotMark); 0 is
	// no match.
	Mark    uint32
	NotMark bool
	// CtState matches `-m conntrack --ctstate CtState`.
	CtState    string
	NotCtState bool

	// Jump is the target: a chain, or ACCEPT, DROP, REJECT, RETURN, DNAT
	// (to Endpoint), MARK (with MarkOr or MarkXor) or MASQUERADE; empty
	// for a rule that only counts.
	Jump    string
	MarkOr  uint32
	MarkXor uint32

	// Endpoint is the endpoint the rule is about (the DNAT destination,
	// the endpoint a KUBE-SVC rule picks); zero for others.
	Endpoint netip.AddrPort
	// Service is the service port the rule implements; nil for kdive's
	// shared rules.
	Service *model.ServicePortName
}

// equal compares rules by value.
func (r Rule) equal(o Rule) bool {
	if (r.Recent == nil) != (o.Recent == nil) || r.Recent != nil && *r.Recent != *o.Recent {
		return false
	}
	r.Recent, o.Recent = nil, nil
	return r == o
}

// Recent is session affinity: KUBE-SEP rules --set the client's address in
// the list Name, KUBE-SVC rules --rcheck it within Seconds.
type Recent struct {
	Name    string
	Set     bool
	Seconds int
}

// Targets that are not chains.
const (
	targetAccept     = "ACCEPT"
	targetDrop       = "DROP"
	targetReject     = "REJECT"
	targetReturn     = "RETURN"
	targetDNAT       = "DNAT"
	targetMark       = "MARK"
	targetMasquerade = "MASQUERADE"
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

// String is the rule as an `-A CHAIN` line would print it, without the
// command and chain.
func (r *Rule) String() string {
	var b strings.Builder
	r.appendTo(&b, "", "")
	return strings.TrimSpace(b.String())
}

// appendTo writes "<cmd> <chain> <rule>" in iptables-restore syntax.
func (r *Rule) appendTo(b *strings.Builder, cmd, chain string) {
	var scratch [64]byte
	if cmd != "" {
		b.WriteString(cmd)
		b.WriteByte(' ')
		b.WriteString(chain)
	}
	if r.Comment != "" {
		b.WriteString(" -m comment --comment ")
		writeQuoted(b, r.Comment)
	}
	if r.SrcType != "" || r.DstType != "" {
		b.WriteString(" -m addrtype")
		if r.SrcType != "" {
			b.WriteString(" --src-type ")
			b.WriteString(r.SrcType)
		}
		if r.DstType != "" {
			b.WriteString(" --dst-type ")
			b.WriteString(r.DstType)
		}
	}
	if r.Recent != nil {
		b.WriteString(" -m recent --name ")
		b.WriteString(r.Recent.Name)
		if r.Recent.Set {
			b.WriteString(" --set")
		} else {
			b.WriteString(" --rcheck --seconds ")
			b.Write(strconv.AppendInt(scratch[:0], int64(r.Recent.Seconds), 10))
			b.WriteString(" --reap")
		}
	}
	if r.Probability != 0 {
		b.WriteString(" -m statistic --mode random --probability ")
		b.WriteString(probabilityText(r.Probability))
	}
	if r.Proto != "" {
		b.WriteString(" -m ")
		b.WriteString(r.Proto)
		b.WriteString(" -p ")
		b.WriteString(r.Proto)
	}
	if r.Dst.IsValid() {
		b.WriteString(" -d ")
		writePrefix(b, r.Dst, scratch[:0])
	}
	if r.DPort != 0 {
		b.WriteString(" --dport ")
		b.Write(strconv.AppendUint(scratch[:0], uint64(r.DPort), 10))
	}
	if r.Src.IsValid() {
		if r.NotSrc {
			b.WriteString(" !")
		}
		b.WriteString(" -s ")
		writePrefix(b, r.Src, scratch[:0])
	}
	if r.Mark != 0 {
		b.WriteString(" -m mark")
		if r.NotMark {
			b.WriteString(" !")
		}
		b.WriteString(" --mark ")
		writeHex(b, r.Mark)
		b.WriteByte('/')
		writeHex(b, r.Mark)
	}
	if r.CtState != "" {
		b.WriteString(" -m conntrack")
		if r.NotCtState {
			b.WriteString(" !")
		}
		b.WriteString(" --ctstate ")
		b.WriteString(r.CtState)
	}
	r.appendTarget(b, scratch[:0])
}

func (r *Rule) appendTarget(b *strings.Builder, scratch []byte) {
	if r.Jump == "" {
		return
	}
	b.WriteString(" -j ")
	b.WriteString(r.Jump)
	switch r.Jump {
	case targetDNAT:
		b.WriteString(" --to-destination ")
		b.Write(r.Endpoint.AppendTo(scratch))
	case targetMark:
		if r.MarkOr != 0 {
			b.WriteString(" --or-mark ")
			writeHex(b, r.MarkOr)
		} else {
			b.WriteString(" --xor-mark ")
			writeHex(b, r.MarkXor)
		}
	case targetMasquerade:
		b.WriteString(" --random-fully")
	}
}

// writeQuoted quotes a comment that has spaces, as upstream does.
func writeQuoted(b *strings.Builder, s string) {
	if strings.IndexByte(s, ' ') < 0 {
		b.WriteString(s)
		return
	}
	b.WriteByte('"')
	b.WriteString(s)
	b.WriteByte('"')
}

// writePrefix prints a single address without its /32, as upstream does.
func writePrefix(b *strings.Builder, p netip.Prefix, scratch []byte) {
	if p.IsSingleIP() {
		b.Write(p.Addr().AppendTo(scratch))
		return
	}
	b.Write(p.AppendTo(scratch))
}

func writeHex(b *strings.Builder, v uint32) {
	var buf [16]byte
	b.WriteString("0x")
	b.Write(strconv.AppendUint(buf[:0], uint64(v), 16))
}

// precomputed probabilities 1/n, as upstream formats them ("%0.10f").
var probabilities = func() []string {
	out := make([]string, 257)
	for n := 1; n < len(out); n++ {
		out[n] = strconv.FormatFloat(1/float64(n), 'f', 10, 64)
	}
	return out
}()

func probabilityText(p float64) string {
	if n := int(1/p + 0.5); n > 0 && n < len(probabilities) && 1/float64(n) == p {
		return probabilities[n]
	}
	return strconv.FormatFloat(p, 'f', 10, 64)
}
