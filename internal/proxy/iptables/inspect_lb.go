package iptables

import (
	"net/netip"
	"strings"

	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy"
)

// LB is the load-balancing table the rules implement. Addresses come
// from nat KUBE-SERVICES and KUBE-NODEPORTS (ports with endpoints) and
// from the REJECT and DROP rules in filter KUBE-SERVICES and
// KUBE-EXTERNAL-SERVICES (ports without endpoints for that traffic); the
// comments say an address's kind. Endpoints and their shares come from
// the chain a cluster IP jumps to (internal) and the one KUBE-EXT ends
// in (external). Counters are the nat counters of the jumps to KUBE-SEP
// chains: nat sees a connection's first packet only, so they count
// load-balanced connections.
//
// Without any endpoint a port's external IPs and LoadBalancer IPs have
// the same REJECT rule (as upstream writes them); they read back as
// ExternalIP. Its traffic policies leave no trace then either.
func (in *Inspected) LB() *proxy.LBTable {
	b := &lbBuilder{in: in, ports: map[model.ServicePortName]*lbPort{}, lbAddrs: map[netip.AddrPort]bool{}}
	b.shared()
	t := &proxy.LBTable{Mode: "iptables"}
	clusters := map[netip.Prefix]bool{}
	for _, sc := range in.rs.Services {
		for _, c := range sc.Chains {
			for i := range c.Rules {
				r := &c.Rules[i]
				if strings.HasPrefix(c.Name, prefixSVC) && r.Jump == chainMarkMasq && r.Dst.IsValid() {
					switch {
					case !r.Src.IsValid():
						t.MasqueradeAll = true
					case r.NotSrc && !clusters[r.Src]:
						clusters[r.Src] = true
						t.Cluster = append(t.Cluster, r.Src)
					}
				}
			}
		}
		b.port(sc)
	}
	for _, p := range b.order {
		if c := in.rs.Chain(TableNAT, p.internal); c != nil {
			p.s.Internal = shares(c)
		}
		t.Services = append(t.Services, p.s)
	}
	t.Normalize()
	return t
}

type lbBuilder struct {
	in     *Inspected
	ports  map[model.ServicePortName]*lbPort
	order  []*lbPort
	nodeIP []netip.Addr
	// lbAddrs are addresses KUBE-PROXY-FIREWALL or a comment says are
	// LoadBalancer IPs.
	lbAddrs map[netip.AddrPort]bool
}

type lbPort struct {
	s     proxy.LBService
	addrs map[proxy.LBAddress]bool
	// internal is the chain cluster IPs jump to; lbIPs the port's
	// LoadBalancer IPs.
	internal string
	lbIPs    map[netip.Addr]bool
}

func (b *lbBuilder) get(n model.ServicePortName) *lbPort {
	if p := b.ports[n]; p != nil {
		return p
	}
	p := &lbPort{s: proxy.LBService{Name: n, Protocol: n.Protocol}, addrs: map[proxy.LBAddress]bool{}, lbIPs: map[netip.Addr]bool{}}
	b.ports[n] = p
	b.order = append(b.order, p)
	return p
}

func (p *lbPort) add(kind proxy.AddrKind, ap netip.AddrPort) {
	a := proxy.LBAddress{Kind: kind, Addr: ap}
	if !p.addrs[a] {
		p.addrs[a] = true
		p.s.Addresses = append(p.s.Addresses, a)
	}
	if kind == proxy.KindLoadBalancer {
		p.lbIPs[ap.Addr()] = true
	}
}

// dest is the address:port a shared rule matches, if it names one.
func dest(r *Rule) (netip.AddrPort, bool) {
	if !r.Dst.IsValid() || !r.Dst.IsSingleIP() || r.DPort == 0 || r.Service == nil {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(r.Dst.Addr(), r.DPort), true
}

// shared reads the addresses from the shared chains.
func (b *lbBuilder) shared() {
	rs := b.in.rs
	rules := func(t Table, name string) []Rule {
		if c := rs.Chain(t, name); c != nil {
			return c.Rules
		}
		return nil
	}
	natServices := rules(TableNAT, chainServices)
	for i := range natServices {
		if r := &natServices[i]; r.Jump == chainNodePorts && r.Dst.IsSingleIP() {
			b.nodeIP = append(b.nodeIP, r.Dst.Addr())
		}
	}
	for _, r := range rules(TableFilter, chainFirewall) {
		if ap, ok := dest(&r); ok {
			b.lbAddrs[ap] = true
		}
	}
	for i := range natServices {
		r := &natServices[i]
		ap, ok := dest(r)
		if !ok || !isServiceChain(r.Jump) {
			continue
		}
		p := b.get(*r.Service)
		kind := addrKind(r)
		p.add(kind, ap)
		if kind == proxy.KindClusterIP {
			p.internal = r.Jump
			p.s.InternalPolicyLocal = strings.HasPrefix(r.Jump, prefixSVL)
		}
	}
	for _, r := range rules(TableNAT, chainNodePorts) {
		if r.Service != nil && r.DPort != 0 && strings.HasPrefix(r.Jump, prefixEXT) {
			p := b.get(*r.Service)
			for _, ip := range b.nodeIP {
				p.add(proxy.KindNodePort, netip.AddrPortFrom(ip, r.DPort))
			}
		}
	}
	for _, r := range rules(TableFilter, chainServices) {
		if ap, ok := dest(&r); ok && (r.Jump == targetReject || r.Jump == targetDrop) {
			p := b.get(*r.Service)
			p.add(proxy.KindClusterIP, ap)
			p.s.InternalPolicyLocal = p.s.InternalPolicyLocal || r.Jump == targetDrop
		}
	}
	for _, r := range rules(TableFilter, chainExternalServices) {
		if r.Service == nil || r.DPort == 0 || r.Jump != targetReject && r.Jump != targetDrop {
			continue
		}
		p := b.get(*r.Service)
		p.s.ExternalPolicyLocal = p.s.ExternalPolicyLocal || r.Jump == targetDrop
		if r.DstLocal {
			for _, ip := range b.nodeIP {
				p.add(proxy.KindNodePort, netip.AddrPortFrom(ip, r.DPort))
			}
		} else if ap, ok := dest(&r); ok {
			kind := proxy.KindExternalIP
			if b.lbAddrs[ap] {
				kind = proxy.KindLoadBalancer
			}
			p.add(kind, ap)
		}
	}
}

// addrKind is the kind of address a nat KUBE-SERVICES rule captures: its
// comment says, else the chain it jumps to.
func addrKind(r *Rule) proxy.AddrKind {
	switch {
	case strings.HasSuffix(r.Comment, " cluster IP"):
		return proxy.KindClusterIP
	case strings.HasSuffix(r.Comment, " external IP"):
		return proxy.KindExternalIP
	case strings.HasSuffix(r.Comment, " loadbalancer IP"), strings.HasPrefix(r.Jump, prefixFW):
		return proxy.KindLoadBalancer
	case strings.HasPrefix(r.Jump, prefixEXT):
		return proxy.KindExternalIP
	}
	return proxy.KindClusterIP
}

// port reads a port's own chains: endpoints, policies, affinity, source
// ranges and counters.
func (b *lbBuilder) port(sc *ServiceChains) {
	p := b.get(sc.Name)
	rs := b.in.rs
	for _, c := range sc.Chains {
		switch {
		case strings.HasPrefix(c.Name, prefixEXT):
			p.s.External = []proxy.LBEndpoint{}
			for i := range c.Rules {
				r := &c.Rules[i]
				p.s.ExternalPolicyLocal = p.s.ExternalPolicyLocal || r.SrcLocal
				last := i == len(c.Rules)-1 && !r.Src.IsValid() && !r.SrcLocal
				if sub := rs.Chain(TableNAT, r.Jump); last && sub != nil && (strings.HasPrefix(r.Jump, prefixSVC) || strings.HasPrefix(r.Jump, prefixSVL)) {
					p.s.External = shares(sub)
					p.s.ExternalPolicyLocal = p.s.ExternalPolicyLocal || strings.HasPrefix(r.Jump, prefixSVL)
				}
			}
		case strings.HasPrefix(c.Name, prefixFW):
			p.s.SourceRanges = p.sourceRanges(c)
		case strings.HasPrefix(c.Name, prefixSVC), strings.HasPrefix(c.Name, prefixSVL):
			b.balancing(p, c)
		}
	}
}

// balancing reads a KUBE-SVC or KUBE-SVL chain's affinity and counters.
func (b *lbBuilder) balancing(p *lbPort, c *Chain) {
	counts := b.in.counts[chainKey{c.Table, c.Name}]
	for i := range c.Rules {
		r := &c.Rules[i]
		if !strings.HasPrefix(r.Jump, prefixSEP) {
			continue
		}
		if r.Recent != nil && !r.Recent.Set && (c.Name == p.internal || p.s.AffinitySeconds == 0) {
			p.s.AffinitySeconds = r.Recent.Seconds
		}
		if i < len(counts) {
			if p.s.Counters == nil {
				p.s.Counters = &proxy.Counters{}
			}
			p.s.Counters.Packets += counts[i].Packets
			p.s.Counters.Bytes += counts[i].Bytes
		}
	}
}

// sourceRanges are the sources a KUBE-FW chain lets on to KUBE-EXT. The
// port's own LoadBalancer IPs after the ranges are not ranges: they let
// the node reach a VIP-like load balancer (see portRender.firewall).
func (p *lbPort) sourceRanges(c *Chain) []netip.Prefix {
	var out []netip.Prefix
	n := 0
	for i := range c.Rules {
		r := &c.Rules[i]
		if !r.Src.IsValid() || r.NotSrc || !strings.HasPrefix(r.Jump, prefixEXT) {
			continue
		}
		if n > 0 && r.Src.IsSingleIP() && p.lbIPs[r.Src.Addr()] {
			continue
		}
		out = append(out, r.Src)
		n++
	}
	return out
}

// shares are the endpoints a KUBE-SVC or KUBE-SVL chain picks for a new
// client, each with its effective chance: the first statistic rule's p1,
// the second's (1-p1)*p2, ..., an unconditional one the remainder.
// Affinity rules (-m recent --rcheck) do not match a new client.
func shares(c *Chain) []proxy.LBEndpoint {
	out := []proxy.LBEndpoint{}
	idx := map[netip.AddrPort]int{}
	rest := 1.0
	for i := range c.Rules {
		r := &c.Rules[i]
		if !strings.HasPrefix(r.Jump, prefixSEP) || r.Recent != nil {
			continue
		}
		p := 1.0
		if r.Probability > 0 {
			p = r.Probability
		}
		share := rest * p
		rest -= share
		if !r.Endpoint.IsValid() {
			continue // a KUBE-SEP chain without DNAT
		}
		if j, ok := idx[r.Endpoint]; ok {
			out[j].Probability += share
			continue
		}
		idx[r.Endpoint] = len(out)
		out = append(out, proxy.LBEndpoint{Addr: r.Endpoint, Probability: share})
	}
	return out
}
