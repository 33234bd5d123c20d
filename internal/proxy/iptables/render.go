package iptables

import (
	"cmp"
	"net/netip"
	"slices"
	"strings"

	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy"
	"github.com/kdive/kdive/internal/xtables"
)

// Render turns a Desired snapshot into the iptables rules that implement
// it. It is pure: no kernel, no state.
func Render(d *proxy.Desired) *Ruleset {
	return newRenderer().render(d, nil)
}

// renderer renders Desired snapshots, reusing chain names between calls
// and, when given the previous Ruleset, the chains of the service ports
// that did not change.
type renderer struct {
	names *nameCache
}

func newRenderer() *renderer { return &renderer{names: newNameCache()} }

// globals are the inputs every service port's rules depend on besides the
// port itself; when they change, every port is rendered again.
type globals struct {
	clusterCIDR netip.Prefix
	masqAll     bool
	nodeIP      netip.Addr
	nodePortIPs string
	localIPs    string
	// largeCluster leaves the comments off the rules of each endpoint, as
	// upstream does beyond largeClusterEndpoints: they are most of the
	// rules, and the comments a third of their size (10k × 10 endpoints:
	// first sync 6.0 s → 4.8 s with either flavour, a legacy change 1.75 s
	// → 1.07 s).
	largeCluster bool
}

// largeClusterEndpoints is upstream's largeClusterEndpointsThreshold.
const largeClusterEndpoints = 1000

func globalsOf(d *proxy.Desired) globals {
	g := globals{masqAll: d.Config.MasqueradeAll, nodePortIPs: joinAddrs(d.NodePortIPs), localIPs: joinAddrs(d.Node.IPs)}
	eps := 0
	for _, p := range d.Services {
		eps += len(p.Endpoints)
	}
	g.largeCluster = eps > largeClusterEndpoints
	// One range, like upstream's cluster-CIDR local traffic detector
	// (a rule can only say "not from this one range").
	if len(d.Config.ClusterCIDRs) > 0 {
		g.clusterCIDR = d.Config.ClusterCIDRs[0].Masked()
	}
	if len(d.Node.IPs) > 0 {
		g.nodeIP = d.Node.IPs[0]
	}
	return g
}

func joinAddrs(as []netip.Addr) string {
	var b strings.Builder
	for _, a := range as {
		b.WriteString(a.String())
		b.WriteByte(',')
	}
	return b.String()
}

// render builds the Ruleset for d. With prev (what the last render
// produced) and d.Changed, ports not in d.Changed keep their chains from
// prev unless the globals changed.
func (r *renderer) render(d *proxy.Desired, prev *Ruleset) *Ruleset {
	g := globalsOf(d)
	rs := &Ruleset{glob: g, LocalIPs: slices.Clone(d.Node.IPs)}
	var reuse map[model.ServicePortName]*ServiceChains
	if prev != nil && d.Changed != nil && prev.glob == g {
		reuse = make(map[model.ServicePortName]*ServiceChains, len(prev.Services))
		for _, sc := range prev.Services {
			reuse[sc.Name] = sc
		}
	}
	rs.Services = make([]*ServiceChains, 0, len(d.Services))
	// The shared chains stay as they were when no port was added or
	// removed and the rendered ones contribute the same rules.
	sameTop := reuse != nil && len(d.Services) == len(prev.Services)
	for _, p := range d.Services {
		old := reuse[p.Name]
		if old != nil && !d.Changed[p.Name] {
			rs.Services = append(rs.Services, old)
			continue
		}
		sc := r.port(p, g)
		sameTop = sameTop && old != nil && sc.sameTop(old)
		rs.Services = append(rs.Services, sc)
	}
	if reuse == nil {
		// Forget the names of ports that are gone (on whole renders only:
		// between them a few stale entries cost less than looking). A
		// resync's Changed is no longer nil, so ask what was rendered.
		keep := make(map[model.ServicePortName]bool, len(d.Services))
		for _, p := range d.Services {
			keep[p.Name] = true
		}
		r.names.retain(keep)
	}
	if sameTop {
		rs.Top = prev.Top
	} else {
		rs.Top = r.top(rs, d)
	}
	rs.Hooks = hooks()
	return rs
}

// sameTop says whether two renders of a port add the same rules to the
// shared chains.
func (sc *ServiceChains) sameTop(o *ServiceChains) bool {
	for i := range sc.top {
		if !slices.EqualFunc(sc.top[i], o.top[i], Rule.equal) {
			return false
		}
	}
	return true
}

// topChain names the shared chains service ports add rules to.
type topChain int

const (
	topNATServices topChain = iota
	topNATNodePorts
	topFilterServices
	topFilterExternal
	topFilterNodePorts
	topFilterFirewall
	numTopChains
)

var (
	ruleMarkMasq = Rule{Rule: xtables.Rule{Jump: targetMark, MarkOr: MasqueradeMark}}
	ruleCanary   = Rule{Rule: xtables.Rule{Comment: "kdive canary: this rule goes away when someone flushes the table", Jump: targetReturn}}
	rulesPost    = []Rule{
		{Rule: xtables.Rule{Mark: MasqueradeMark, NotMark: true, Jump: targetReturn}},
		{Rule: xtables.Rule{Jump: targetMark, MarkXor: MasqueradeMark}},
		{Rule: xtables.Rule{Comment: "kubernetes service traffic requiring SNAT", Jump: targetMasquerade, RandomFully: true}},
	}
	rulesForward = []Rule{
		{Rule: xtables.Rule{CtState: xtables.CtInvalid, Jump: targetDrop}},
		{Rule: xtables.Rule{Comment: "kubernetes forwarding rules", Mark: MasqueradeMark, Jump: targetAccept}},
		{Rule: xtables.Rule{Comment: "kubernetes forwarding conntrack rule", CtState: xtables.CtRelated | xtables.CtEstablished, Jump: targetAccept}},
	}
	// ruleLocalnet blocks connections to 127.0.0.0/8 from elsewhere, which
	// route_localnet (needed for NodePorts on localhost) would let in
	// (upstream's KUBE-FIREWALL rule, kubernetes issue 90259).
	ruleLocalnet = Rule{Rule: xtables.Rule{
		Comment: "block incoming localnet connections", Dst: netip.MustParsePrefix("127.0.0.0/8"),
		Src: netip.MustParsePrefix("127.0.0.0/8"), NotSrc: true,
		CtState: xtables.CtRelated | xtables.CtEstablished | xtables.CtDNAT, NotCtState: true, Jump: targetDrop,
	}}
	loopback = netip.MustParsePrefix("127.0.0.0/8")
)

// top assembles the shared chains from the ports' contributions.
func (r *renderer) top(rs *Ruleset, d *proxy.Desired) []*Chain {
	var parts [numTopChains][]Rule
	var n [numTopChains]int
	for _, sc := range rs.Services {
		for i := range sc.top {
			n[i] += len(sc.top[i])
		}
	}
	for i := range parts {
		parts[i] = make([]Rule, 0, n[i]+len(d.NodePortIPs))
	}
	for _, sc := range rs.Services {
		for i := range sc.top {
			parts[i] = append(parts[i], sc.top[i]...)
		}
	}
	// Sorted by target, descending: iptables-nft-restore keeps the chains
	// a transaction names in a sorted list, and appending in descending
	// order keeps each insertion at its head (10,000 services: 0.5 s of
	// strcmp otherwise). The order carries no meaning: rules of different
	// ports match different address:port pairs (upstream writes them in
	// map order).
	slices.SortStableFunc(parts[topNATServices], func(a, b Rule) int { return cmp.Compare(b.Jump, a.Jump) })
	localhost := false
	for _, ip := range d.NodePortIPs {
		localhost = localhost || ip.IsLoopback()
		parts[topNATServices] = append(parts[topNATServices], Rule{Rule: xtables.Rule{
			Comment: "kubernetes service nodeports; NOTE: this must be the last rule in this chain",
			Dst:     netip.PrefixFrom(ip, ip.BitLen()), Jump: chainNodePorts,
		}})
	}
	firewall := parts[topFilterFirewall]
	if localhost {
		firewall = append([]Rule{ruleLocalnet}, firewall...)
	}
	ch := func(t Table, name string, rules []Rule) *Chain {
		return &Chain{Table: t, Name: name, Rules: rules}
	}
	return []*Chain{
		ch(TableFilter, chainServices, parts[topFilterServices]),
		ch(TableFilter, chainExternalServices, parts[topFilterExternal]),
		ch(TableFilter, chainForward, rulesForward),
		ch(TableFilter, chainNodePorts, parts[topFilterNodePorts]),
		ch(TableFilter, chainFirewall, firewall),
		ch(TableFilter, ChainCanary, []Rule{ruleCanary}),
		ch(TableNAT, chainServices, parts[topNATServices]),
		ch(TableNAT, chainNodePorts, parts[topNATNodePorts]),
		ch(TableNAT, chainPostrouting, rulesPost),
		ch(TableNAT, chainMarkMasq, []Rule{ruleMarkMasq}),
		ch(TableNAT, ChainCanary, []Rule{ruleCanary}),
		ch(TableMangle, ChainCanary, []Rule{ruleCanary}),
	}
}

// hooks are the jumps from the built-in chains, in their order there (as
// upstream's prepends leave them).
func hooks() []*Chain {
	newOnly := func(comment, target string) Rule {
		return Rule{Rule: xtables.Rule{Comment: comment, CtState: xtables.CtNew, Jump: target}}
	}
	portals := "kubernetes service portals"
	external := "kubernetes externally-visible service portals"
	lbFirewall := "kubernetes load balancer firewall"
	return []*Chain{
		{Table: TableFilter, Name: "INPUT", Builtin: true, Rules: []Rule{
			newOnly(lbFirewall, chainFirewall),
			{Rule: xtables.Rule{Comment: "kubernetes health check service ports", Jump: chainNodePorts}},
			newOnly(external, chainExternalServices),
		}},
		{Table: TableFilter, Name: "FORWARD", Builtin: true, Rules: []Rule{
			newOnly(lbFirewall, chainFirewall),
			{Rule: xtables.Rule{Comment: "kubernetes forwarding rules", Jump: chainForward}},
			newOnly(portals, chainServices),
			newOnly(external, chainExternalServices),
		}},
		{Table: TableFilter, Name: "OUTPUT", Builtin: true, Rules: []Rule{
			newOnly(lbFirewall, chainFirewall),
			newOnly(portals, chainServices),
		}},
		{Table: TableNAT, Name: "PREROUTING", Builtin: true, Rules: []Rule{{Rule: xtables.Rule{Comment: portals, Jump: chainServices}}}},
		{Table: TableNAT, Name: "OUTPUT", Builtin: true, Rules: []Rule{{Rule: xtables.Rule{Comment: portals, Jump: chainServices}}}},
		{Table: TableNAT, Name: "POSTROUTING", Builtin: true, Rules: []Rule{
			{Rule: xtables.Rule{Comment: "kubernetes postrouting rules", Jump: chainPostrouting}},
		}},
	}
}

func hostPrefix(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, a.BitLen()) }
