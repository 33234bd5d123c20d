package proxy

import (
	"net/netip"

	"golang.org/x/sys/unix"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/model"
)

// StaleConntrack lists the connection-tracking entries to delete after
// moving from prev to next: for UDP ports, the flows to an endpoint (an
// address and port) that left, also when only its port changed (a DNS
// client would keep sending to a dead pod, or a port nothing listens on,
// until the entry times out), and every flow to a port that had no
// endpoints and now has some (its packets were rejected or dropped, and
// the entry would keep them from being load-balanced). prev may be nil
// (nothing is stale).
func StaleConntrack(prev, next *Desired) []kernel.ConntrackFilter {
	if prev == nil {
		return nil
	}
	old := map[model.ServicePortName]*Port{}
	for _, p := range prev.Services {
		if p.Name.Protocol == model.ProtocolUDP {
			old[p.Name] = p
		}
	}
	var out []kernel.ConntrackFilter
	seen := map[kernel.ConntrackFilter]bool{}
	add := func(f kernel.ConntrackFilter) {
		if !seen[f] {
			seen[f] = true
			out = append(out, f)
		}
	}
	nextPorts := map[model.ServicePortName]*Port{}
	for _, p := range next.Services {
		nextPorts[p.Name] = p
	}
	for name, o := range old {
		n := nextPorts[name]
		now := map[netip.AddrPort]bool{}
		if n != nil {
			for _, e := range usable(n) {
				now[netip.AddrPortFrom(e.IP, uint16(e.Port))] = true
			}
		}
		for _, e := range usable(o) {
			if now[netip.AddrPortFrom(e.IP, uint16(e.Port))] {
				continue
			}
			gone := kernel.ConntrackFilter{Protocol: unix.IPPROTO_UDP, ReplySrc: e.IP, ReplySrcPort: uint16(e.Port)}
			for _, a := range serviceAddrs(o) {
				gone.OrigDst, gone.OrigDstPort = a, uint16(o.Port)
				add(gone)
			}
			if o.NodePort != 0 {
				for _, a := range prev.NodePortIPs {
					gone.OrigDst, gone.OrigDstPort = a, uint16(o.NodePort)
					add(gone)
				}
			}
		}
	}
	for _, n := range next.Services {
		if n.Name.Protocol != model.ProtocolUDP || len(usable(n)) == 0 {
			continue
		}
		if o, ok := old[n.Name]; ok && len(usable(o)) > 0 {
			continue
		}
		for _, a := range serviceAddrs(n) {
			add(kernel.ConntrackFilter{Protocol: unix.IPPROTO_UDP, OrigDst: a, OrigDstPort: uint16(n.Port)})
		}
		if n.NodePort != 0 {
			for _, a := range next.NodePortIPs {
				add(kernel.ConntrackFilter{Protocol: unix.IPPROTO_UDP, OrigDst: a, OrigDstPort: uint16(n.NodePort)})
			}
		}
	}
	return out
}

func usable(p *Port) []model.Endpoint {
	return append(append([]model.Endpoint{}, p.Cluster...), p.Local...)
}

func serviceAddrs(p *Port) []netip.Addr {
	out := append([]netip.Addr{}, p.ClusterIPs...)
	out = append(out, p.ExternalIPs...)
	return append(out, p.LoadBalancerIPs...)
}
