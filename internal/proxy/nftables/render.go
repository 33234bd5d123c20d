package nftables

import (
	"net/netip"
	"slices"

	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy"
)

// Names of the chains and sets every ruleset has.
const (
	chainPrerouting    = "nat-prerouting"
	chainOutput        = "nat-output"
	chainPostrouting   = "nat-postrouting"
	chainServices      = "services"
	chainMasquerading  = "masquerading"
	chainMarkMasq      = "mark-for-masquerade"
	chainClusterIPMasq = "cluster-ip-masquerade"
	chainReject        = "reject-chain"

	setServiceIPs   = "service-ips"
	setFirewallIPs  = "firewall-ips"
	setHairpin      = "hairpin"
	setClusterCIDRs = "cluster-cidrs"
)

// Render turns a Desired snapshot into the ruleset that implements it. It
// is pure: the same input gives the same Ruleset, and nothing touches the
// kernel.
func Render(d *proxy.Desired) *Ruleset {
	rs := newRuleset(globalsOf(d))
	rs.hints = sizeHints(d, len(rs.glob.nodePortIPs))
	rs.Sets[setServiceIPs].elems = make(map[mkey]*slot, rs.hints[setServiceIPs])
	for _, p := range d.Services {
		rs.addPort(p, nil)
	}
	rs.hints = nil
	return rs
}

// sizeHints estimates the element count of the shared sets, to size them
// once rather than grow them element by element.
func sizeHints(d *proxy.Desired, nodePortIPs int) map[string]int {
	h := map[string]int{}
	for _, p := range d.Services {
		keys := len(p.ClusterIPs) + len(p.ExternalIPs) + len(p.LoadBalancerIPs)
		if p.NodePort != 0 {
			keys += nodePortIPs
		}
		h[setServiceIPs] += keys
		name := sharedName("endpoints-", len(p.InternalEndpoints()))
		if p.InternalPolicyLocal {
			name = sharedName("local-endpoints-", len(p.InternalEndpoints()))
		}
		h[name] += keys * len(p.InternalEndpoints())
	}
	return h
}

// globals is what the whole ruleset depends on besides the service ports;
// when it changes, Sync renders everything again.
type globals struct {
	node        string
	localIPs    []netip.Addr
	nodePortIPs []netip.Addr
	cidrs       []netip.Prefix
	masqAll     bool
}

func globalsOf(d *proxy.Desired) globals {
	g := globals{node: d.Node.Name, masqAll: d.Config.MasqueradeAll}
	for _, ip := range d.Node.IPs {
		if ip.Is4() {
			g.localIPs = append(g.localIPs, ip)
		}
	}
	for _, ip := range d.NodePortIPs {
		if ip.Is4() && !slices.Contains(g.nodePortIPs, ip) {
			g.nodePortIPs = append(g.nodePortIPs, ip)
		}
	}
	g.cidrs = disjoint(d.Config.ClusterCIDRs)
	return g
}

func (g globals) equal(o globals) bool {
	return g.node == o.node && g.masqAll == o.masqAll && slices.Equal(g.localIPs, o.localIPs) &&
		slices.Equal(g.nodePortIPs, o.nodePortIPs) && slices.Equal(g.cidrs, o.cidrs)
}

// disjoint keeps the IPv4 prefixes not inside another one (an interval set
// refuses overlapping elements), sorted.
func disjoint(in []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range in {
		if !p.Addr().Is4() {
			continue
		}
		p = p.Masked()
		inside := false
		for _, q := range in {
			q = q.Masked()
			if q.Addr().Is4() && q != p && q.Bits() <= p.Bits() && q.Contains(p.Addr()) {
				inside = true
			}
		}
		if !inside && !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	return out
}

func newRuleset(g globals) *Ruleset {
	rs := &Ruleset{
		Chains: map[string]*Chain{}, Sets: map[string]*Set{},
		LocalIPs: g.localIPs, glob: g, ports: map[model.ServicePortName]*fragment{},
	}
	chain := func(name string, hook *Hook, rules ...Rule) {
		rs.Chains[name] = &Chain{Name: name, Hook: hook, Rules: rules, refs: 1}
	}
	jump := func(c string) Verdict { return Verdict{Kind: Jump, Chain: c} }
	chain(chainPrerouting, &Hook{"nat", "prerouting", -100}, Rule{Stmt: jump(chainServices)})
	chain(chainOutput, &Hook{"nat", "output", -100}, Rule{Stmt: jump(chainServices)})
	chain(chainPostrouting, &Hook{"nat", "postrouting", 100}, Rule{Stmt: jump(chainMasquerading)})
	chain(chainServices, nil, Rule{Stmt: ServiceVMap{setFirewallIPs}}, Rule{Stmt: ServiceVMap{setServiceIPs}})
	chain(chainMasquerading, nil,
		Rule{Match: []Match{CtDNAT{}, AddrPairInSet{setHairpin}}, Stmt: jump(chainMarkMasq)},
		Rule{Match: []Match{MarkUnset{MasqueradeMark}}, Stmt: Verdict{Kind: Return}},
		Rule{Stmt: SetMark{Mark: MasqueradeMark, Xor: true}},
		Rule{Stmt: Masquerade{}})
	chain(chainMarkMasq, nil, Rule{Stmt: SetMark{Mark: MasqueradeMark}})
	// Cluster-IP traffic is masqueraded when it comes from outside the pod
	// network (the node's own traffic included), or always with
	// MasqueradeAll; without cluster CIDRs only the node's own.
	switch {
	case g.masqAll:
		chain(chainClusterIPMasq, nil, Rule{Stmt: jump(chainMarkMasq)})
	case len(g.cidrs) > 0:
		chain(chainClusterIPMasq, nil, Rule{Match: []Match{SaddrInSet{Set: setClusterCIDRs, Not: true}}, Stmt: jump(chainMarkMasq)})
	default:
		chain(chainClusterIPMasq, nil, Rule{Match: []Match{FibSaddrLocal{}}, Stmt: jump(chainMarkMasq)})
	}
	chain(chainReject, nil,
		Rule{Match: []Match{L4Proto{model.ProtocolTCP}}, Stmt: Reject{TCPReset: true}},
		Rule{Stmt: Reject{}})

	set := func(name string, kind SetKind) *Set {
		s := &Set{Name: name, Kind: kind, elems: map[mkey]*slot{}, refs: 1}
		rs.Sets[name] = s
		return s
	}
	set(setServiceIPs, ServiceVerdicts)
	set(setFirewallIPs, ServiceVerdicts)
	set(setHairpin, AddrPairs)
	if len(g.cidrs) > 0 {
		s := set(setClusterCIDRs, Prefixes)
		for _, p := range g.cidrs {
			k := ElemKey{Addr: p.Addr(), Bits: int8(p.Bits())}
			s.elems[k.m()] = &slot{key: k.m(), first: claim{elem: Element{Key: k}}}
		}
	}
	return rs
}

// fragment records what one service port added to the ruleset, so that
// it can be taken out again.
type fragment struct {
	name   model.ServicePortName // owner of the claims
	claims []elemRef
	shared []string // shared chains, each with the map of the same name if any
	chains []string // the port's own chains
	sets   []string // the port's own sets
}

type elemRef struct {
	set string
	key mkey
}

// addPort adds a service port's elements and chains. rec (may be nil)
// records the state before each change, for the incremental diff.
func (rs *Ruleset) addPort(p *proxy.Port, rec *recorder) {
	if rs.ports[p.Name] != nil {
		return // a duplicate name: the first one wins
	}
	f := &fragment{name: p.Name}
	keys := len(p.ClusterIPs) + len(p.ExternalIPs) + len(p.LoadBalancerIPs) + 1
	f.claims = make([]elemRef, 0, keys*(len(p.Endpoints)+1)+2)
	b := &portBuilder{rs: rs, rec: rec, f: f, p: p, id: portID(p.ServicePort)}
	rs.ports[p.Name] = b.f
	b.build()
}

// removePort takes out everything a service port added.
func (rs *Ruleset) removePort(name model.ServicePortName, rec *recorder) {
	f := rs.ports[name]
	if f == nil {
		return
	}
	delete(rs.ports, name)
	for _, r := range f.claims {
		rs.unclaim(r, &f.name, rec)
	}
	for _, c := range f.chains {
		rec.touchChain(rs, c)
		delete(rs.Chains, c)
	}
	for _, s := range f.sets {
		rec.touchSet(rs, s)
		delete(rs.Sets, s)
	}
	for _, name := range f.shared {
		rs.release(name, rec)
	}
}

func (rs *Ruleset) unclaim(r elemRef, owner *model.ServicePortName, rec *recorder) {
	s := rs.Sets[r.set]
	sl := s.elems[r.key]
	if sl == nil {
		return
	}
	rec.touchElem(rs, r.set, r.key)
	if !sl.remove(owner) {
		delete(s.elems, r.key)
	}
}

// release drops one use of a shared chain (and its map); the last user
// deletes them.
func (rs *Ruleset) release(name string, rec *recorder) {
	if c := rs.Chains[name]; c != nil {
		if c.refs--; c.refs == 0 {
			rec.touchChain(rs, name)
			delete(rs.Chains, name)
		}
	}
	if s := rs.Sets[name]; s != nil {
		if s.refs--; s.refs == 0 {
			rec.touchSet(rs, name)
			delete(rs.Sets, name)
		}
	}
}
