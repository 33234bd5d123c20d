package nftables

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"math/bits"
	"net/netip"
	"slices"
	"strings"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/nft"
	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy"
)

// Inspect reads the table ip kdive-proxy from the kernel of ns and returns
// it as an Inspection: the listing parsed back into a Ruleset (see
// inspect_parse.go), so that Trace runs unchanged over the kernel's state,
// with the node's addresses (for `fib saddr type local`) from ns's links.
// A table with a rule or set kdive never writes is an error wrapping
// ErrUnknownShape (an *UnknownRuleError for a rule, naming its chain and
// handle); no table is an error wrapping nft.ErrNotFound (kernel.ErrNotFound). Service
// ports whose names were too long for a comment read as the shortened
// comment until ResolveNames is given their full names.
func Inspect(ctx context.Context, ns *kernel.NetNS) (proxy.Inspection, error) {
	if ns == nil {
		return nil, errNoNetNS
	}
	conn := nft.New(ns)
	out, err := conn.ListJSON(ctx, nftTable)
	if err != nil {
		return nil, fmt.Errorf("inspect %s: %w", ns, err)
	}
	l, err := parseListing(out)
	if err != nil {
		var ue *UnknownRuleError
		if errors.As(err, &ue) {
			ue.Text = conn.RuleText(ctx, nftTable, ue.Chain, ue.Handle)
		}
		return nil, fmt.Errorf("inspect %s: %w", ns, err)
	}
	links, err := ns.Links()
	if err != nil {
		return nil, fmt.Errorf("inspect %s: %w", ns, err)
	}
	for _, lk := range links {
		for _, p := range lk.Addrs {
			if p.Addr().Is4() && !slices.Contains(l.rs.LocalIPs, p.Addr()) {
				l.rs.LocalIPs = append(l.rs.LocalIPs, p.Addr())
			}
		}
	}
	return &inspection{l}, nil
}

// inspection answers from the table read back.
type inspection struct{ *listing }

var _ proxy.Inspection = (*inspection)(nil)

// ResolveNames names the service ports whose comments the kernel holds
// shortened (names longer than nft's 128-byte comments) by their full
// names, those of known that they were made from (the API objects',
// say): LB, Trace and Explain then name them in full. Without it such a
// port is named as its comment reads: namespace, name and port cut, the
// port ending with "~" and a hash of the full name.
func (in *inspection) ResolveNames(known []model.ServicePortName) {
	pn := portNames{}
	for _, n := range known {
		pn.add(n)
	}
	in.resolve(pn)
}

// Ruleset is the kernel's table as this package's values.
func (in *inspection) Ruleset() *Ruleset { return in.rs }

func (in *inspection) Trace(p proxy.Packet) proxy.Result { return Trace(in.rs, p) }

// LB reads the load-balancing table off the parsed ruleset. Each element
// of service-ips is an address of the port its comment names; its kind
// comes from the chain it leads to (cluster-ip-N, service-<port>: a
// cluster IP; external-N, external-<port>: the others) and, among the
// others, from the firewall-ips elements (LoadBalancer IPs with source
// ranges), the port (a NodePort's differs from the cluster IP's) and the
// node's addresses. The kernel cannot tell a LoadBalancer IP without
// source ranges from an external IP (both are ExternalIP here), nor, for a
// port that drops or rejects on every address, its cluster IP from an
// external IP (the address closest to other ports' cluster IPs is taken).
// Endpoint shares are what Trace finds for a new connection: from a pod
// to the cluster IPs, from outside the node (within the source ranges)
// to the others, averaged over the addresses: buckets of an endpoint / N.
func (in *inspection) LB() *proxy.LBTable {
	rs := in.rs
	t := &proxy.LBTable{Mode: "nftables", MasqueradeAll: masqueradesAll(rs)}
	for _, e := range setElements(rs, setClusterCIDRs) {
		t.Cluster = append(t.Cluster, netip.PrefixFrom(e.Key.Addr, int(e.Key.Bits)))
	}
	var order []model.ServicePortName
	ports := map[model.ServicePortName]*lbPort{}
	get := func(n model.ServicePortName) *lbPort {
		if ports[n] == nil {
			ports[n] = &lbPort{name: n, firewalled: map[ElemKey]bool{}}
			order = append(order, n)
		}
		return ports[n]
	}
	var clusterIPs []netip.Addr
	for _, e := range setElements(rs, setServiceIPs) {
		get(e.Service).elems = append(get(e.Service).elems, e)
		if addrClass(e.Verdict) == classCluster {
			clusterIPs = append(clusterIPs, e.Key.Addr)
		}
	}
	for _, e := range setElements(rs, setFirewallIPs) {
		p := get(e.Service)
		p.firewalled[e.Key] = true
		for _, c := range reachable(rs, e.Verdict) {
			for _, r := range rs.Chains[c].Rules {
				if m, ok := onlyMatch(r).(SaddrInPrefixes); ok && m.Not && r.Stmt == (Verdict{Kind: Drop}) {
					p.ranges = append(p.ranges, m.Prefixes...)
				}
			}
		}
	}
	for _, n := range order {
		t.Services = append(t.Services, in.service(ports[n], clusterIPs))
	}
	t.Normalize()
	return t
}

// lbPort gathers a service port's elements.
type lbPort struct {
	name       model.ServicePortName
	elems      []Element // of service-ips
	firewalled map[ElemKey]bool
	ranges     []netip.Prefix
}

type elemClass int

const (
	classOther elemClass = iota // drop, reject: either kind
	classCluster
	classExternal
)

// addrClass tells a service-ips element's kind by the chain it leads to,
// as Render names them.
func addrClass(v Verdict) elemClass {
	if v.Kind != Goto && v.Kind != Jump {
		return classOther
	}
	switch {
	case strings.HasPrefix(v.Chain, "cluster-ip-"), strings.HasPrefix(v.Chain, "service-"):
		return classCluster
	case strings.HasPrefix(v.Chain, "external-"):
		return classExternal
	}
	return classOther
}

func (in *inspection) service(p *lbPort, knownClusterIPs []netip.Addr) proxy.LBService {
	s := proxy.LBService{Name: p.name, Protocol: p.name.Protocol, SourceRanges: p.ranges}
	if c := in.counters[p.name]; c != nil {
		copied := *c
		s.Counters = &copied
	}
	var cluster, ext, maybe []Element
	for _, e := range p.elems {
		switch {
		case addrClass(e.Verdict) == classCluster:
			cluster = append(cluster, e)
		case addrClass(e.Verdict) == classExternal, p.firewalled[e.Key], in.isNodeAddr(e.Key.Addr):
			ext = append(ext, e)
		default:
			maybe = append(maybe, e)
		}
	}
	if len(cluster) == 0 && len(maybe) > 0 {
		best := slices.MaxFunc(maybe, func(a, b Element) int {
			return cmp.Or(cmp.Compare(commonBits(a.Key.Addr, knownClusterIPs), commonBits(b.Key.Addr, knownClusterIPs)),
				b.Key.Addr.Compare(a.Key.Addr))
		})
		cluster = append(cluster, best)
		maybe = slices.DeleteFunc(maybe, func(e Element) bool { return e.Key == best.Key })
	}
	ext = append(ext, maybe...)

	var clusterAddrs, extAddrs []netip.AddrPort
	for _, e := range cluster {
		a := netip.AddrPortFrom(e.Key.Addr, e.Key.Port)
		clusterAddrs = append(clusterAddrs, a)
		s.Addresses = append(s.Addresses, proxy.LBAddress{Kind: proxy.KindClusterIP, Addr: a})
		s.InternalPolicyLocal = s.InternalPolicyLocal || e.Verdict.Kind == Drop || in.reachesLocal(e.Verdict)
	}
	for _, e := range ext {
		a := netip.AddrPortFrom(e.Key.Addr, e.Key.Port)
		extAddrs = append(extAddrs, a)
		kind := proxy.KindExternalIP
		switch {
		case p.firewalled[e.Key]:
			kind = proxy.KindLoadBalancer
		case len(cluster) > 0 && e.Key.Port != cluster[0].Key.Port, len(cluster) == 0 && in.isNodeAddr(e.Key.Addr):
			kind = proxy.KindNodePort
		}
		s.Addresses = append(s.Addresses, proxy.LBAddress{Kind: kind, Addr: a})
		if c := in.rs.Chains[e.Verdict.Chain]; c != nil && (e.Verdict.Kind == Goto || e.Verdict.Kind == Jump) {
			s.ExternalPolicyLocal = s.ExternalPolicyLocal || slices.ContainsFunc(c.Rules, func(r Rule) bool {
				return slices.Contains(r.Match, Match(FibSaddrLocal{}))
			})
		}
	}
	for _, e := range p.elems {
		s.AffinitySeconds = max(s.AffinitySeconds, in.affinity(e.Verdict))
	}
	s.Internal = in.shares(p.name.Protocol, clusterAddrs, in.podSource())
	if len(extAddrs) > 0 {
		s.External = in.shares(p.name.Protocol, extAddrs, in.outsider(p.ranges))
	}
	return s
}

// shares traces a new connection from src to each address and gives each
// endpoint its share of the picks, averaged over the addresses.
func (in *inspection) shares(proto model.Protocol, addrs []netip.AddrPort, src netip.Addr) []proxy.LBEndpoint {
	sum := map[netip.AddrPort]float64{}
	for _, a := range addrs {
		bs := TraceBranches(in.rs, proxy.Packet{Src: src, Proto: proto, Dst: a.Addr(), Port: int(a.Port())})
		for _, b := range bs {
			if b.Verdict == proxy.DNAT {
				sum[b.Endpoint] += 1 / float64(len(bs)*len(addrs))
			}
		}
	}
	out := make([]proxy.LBEndpoint, 0, len(sum))
	for ep, p := range sum {
		out = append(out, proxy.LBEndpoint{Addr: ep, Probability: p})
	}
	return out
}

// reachesLocal says whether a cluster IP's verdict leads to this node's
// endpoints only (internalTrafficPolicy Local).
func (in *inspection) reachesLocal(v Verdict) bool {
	return slices.ContainsFunc(reachable(in.rs, v), func(c string) bool {
		return strings.HasPrefix(c, "cluster-ip-local-") || strings.HasPrefix(c, "local-affinity-") ||
			strings.HasPrefix(c, "local-endpoints-")
	})
}

// affinity is the longest timeout of the client sets a verdict leads to.
func (in *inspection) affinity(v Verdict) int {
	secs := 0
	for _, c := range reachable(in.rs, v) {
		for _, r := range in.rs.Chains[c].Rules {
			if m, ok := onlyMatch(r).(SaddrInSet); ok {
				if s := in.rs.Sets[m.Set]; s != nil && s.Kind == Clients {
					secs = max(secs, s.Timeout)
				}
			}
		}
	}
	return secs
}

func (in *inspection) isNodeAddr(a netip.Addr) bool {
	return a.IsLoopback() || slices.Contains(in.rs.LocalIPs, a)
}

func (in *inspection) inClusterCIDRs(a netip.Addr) bool {
	return slices.ContainsFunc(setElements(in.rs, setClusterCIDRs), func(e Element) bool {
		return netip.PrefixFrom(e.Key.Addr, int(e.Key.Bits)).Contains(a)
	})
}

// podSource is a source address for traffic from a pod (one in the
// cluster CIDRs), or from outside when there are none.
func (in *inspection) podSource() netip.Addr {
	if cidrs := setElements(in.rs, setClusterCIDRs); len(cidrs) > 0 {
		return cidrs[0].Key.Addr.Next()
	}
	return in.outsider(nil)
}

// outsider is a source address outside the node and the cluster CIDRs,
// within the source ranges when there are any.
func (in *inspection) outsider(ranges []netip.Prefix) netip.Addr {
	var cands []netip.Addr
	for _, r := range ranges {
		if n := r.Addr().Next(); r.Contains(n) {
			cands = append(cands, n)
		}
		cands = append(cands, r.Addr())
	}
	for _, s := range []string{"203.0.113.254", "198.51.100.254", "192.0.2.254"} {
		cands = append(cands, netip.MustParseAddr(s))
	}
	for _, a := range cands {
		inRange := len(ranges) == 0 || slices.ContainsFunc(ranges, func(r netip.Prefix) bool { return r.Contains(a) })
		if inRange && !in.isNodeAddr(a) && !in.inClusterCIDRs(a) {
			return a
		}
	}
	return cands[0]
}

// commonBits is the longest prefix a shares with any of to, in bits.
func commonBits(a netip.Addr, to []netip.Addr) int {
	best := 0
	for _, b := range to {
		best = max(best, bits.LeadingZeros32(be32(a.As4())^be32(b.As4())))
	}
	return best
}

func be32(b [4]byte) uint32 {
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

// masqueradesAll: cluster-ip-masquerade marks every packet.
func masqueradesAll(rs *Ruleset) bool {
	c := rs.Chains[chainClusterIPMasq]
	return c != nil && slices.ContainsFunc(c.Rules, func(r Rule) bool {
		return len(r.Match) == 0 && r.Stmt == Verdict{Kind: Jump, Chain: chainMarkMasq}
	})
}

// onlyMatch is a rule's one match, or nil.
func onlyMatch(r Rule) Match {
	if len(r.Match) != 1 {
		return nil
	}
	return r.Match[0]
}

func setElements(rs *Ruleset, name string) []Element {
	if s := rs.Sets[name]; s != nil {
		return s.Elements()
	}
	return nil
}

// Explain walks p through the table (the walk Trace takes, see walker),
// one line per step of the first hook: the hook and its base chain, each
// rule that matches in each chain taken (with the element a map lookup
// finds, its comment naming the service port), the buckets a DNAT picks
// among; then, from the same walk's branches, each endpoint with its
// share, whether nat-postrouting masquerades the packet, and the result.
func (in *inspection) Explain(p proxy.Packet) []string {
	x := &explainer{}
	x.add("", "packet %s", p)
	bs := (&walker{rs: in.rs, see: x.say}).branches(p)
	type pick struct {
		n    int
		masq bool
		post []string
	}
	picks := map[netip.AddrPort]*pick{}
	var eps []netip.AddrPort
	var svc model.ServicePortName
	others := map[proxy.Verdict]int{}
	for _, b := range bs {
		if b.Service != (model.ServicePortName{}) {
			svc = b.Service
		}
		if b.Verdict != proxy.DNAT {
			others[b.Verdict]++
			continue
		}
		pk := picks[b.Endpoint]
		if pk == nil {
			pk = &pick{post: postroutingPath(in.rs, b.Path)}
			picks[b.Endpoint] = pk
			eps = append(eps, b.Endpoint)
		}
		pk.n++
		pk.masq = pk.masq || b.Masquerade
	}
	slices.SortFunc(eps, netip.AddrPort.Compare)
	for _, ep := range eps {
		pk := picks[ep]
		masq := "source address kept"
		if pk.masq {
			masq = "masqueraded"
		}
		x.add("", "DNAT to %s (%d of %d picks); hook postrouting: %s: %s", ep, pk.n, len(bs), strings.Join(pk.post, " -> "), masq)
	}
	if len(eps) > 0 {
		for _, v := range slices.Sorted(maps.Keys(others)) {
			x.add("", "%s (%d of %d picks)", v, others[v], len(bs))
		}
	}
	res := Summarize(bs)
	if svc != (model.ServicePortName{}) {
		x.add("", "result for service %s (%s): %s", svc, svc.Protocol, res)
	} else {
		x.add("", "result: %s", res)
	}
	return x.lines
}

// postroutingPath is the part of a branch's path in the postrouting hook.
func postroutingPath(rs *Ruleset, path []string) []string {
	for i, name := range path {
		if c := rs.Chains[name]; c != nil && c.Hook != nil && c.Hook.Hook == "postrouting" {
			return path[i:]
		}
	}
	return nil
}

// explainer narrates the walker's steps.
type explainer struct {
	lines []string
}

func (x *explainer) add(indent, format string, args ...any) {
	x.lines = append(x.lines, indent+fmt.Sprintf(format, args...))
}

// say tells one step, indented by how many numgen picks it is inside.
func (x *explainer) say(st step) {
	indent := strings.Repeat("    ", st.level)
	c := st.chain
	switch st.kind {
	case stepHook:
		x.add("", "hook %s: chain %s (%s)", st.hook, c.Name, c.Hook)
	case stepNoHook:
		x.add("", "hook %s: no chain of table %s %s", st.hook, Family, Table)
	case stepBaseEnd:
		x.add("", "chain %s: end of base chain, policy accept", c.Name)
	case stepRule:
		x.add(indent, "chain %s: %s", c.Name, st.rule)
	case stepElement:
		x.add(indent, "chain %s: %s: element %s", c.Name, st.rule, st.elem.text(ServiceVerdicts))
	case stepNoElement:
		x.add(indent, "chain %s: %s: no element %s", c.Name, st.rule, Element{Key: st.key}.keyString(ServiceVerdicts))
	case stepBucket:
		if st.found {
			x.add(indent+"  ", "bucket %d of %d: element %s: DNAT to %s", st.n, st.of, st.elem.text(EndpointBuckets), st.elem.Endpoint)
		} else {
			x.add(indent+"  ", "bucket %d of %d: no element %s: the rule does not match, next rule", st.n, st.of, Element{Key: st.key}.keyString(EndpointBuckets))
		}
	case stepNumgen:
		x.add(indent+"  ", "numgen %d: goto %s", st.n, st.name)
	case stepChainEnd:
		if !st.matched {
			x.add(indent, "chain %s: no rule matches, return", c.Name)
		} else if c.Hook == nil {
			x.add(indent, "chain %s: end of chain, return", c.Name)
		}
	case stepNoChain:
		x.add(indent, "chain %s does not exist: the kernel would refuse the table", st.name)
	case stepTooDeep:
		x.add(indent, "chain %s: too deep", st.name)
	}
}
