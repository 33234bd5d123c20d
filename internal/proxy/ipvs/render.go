package ipvs

import (
	"fmt"
	"hash/fnv"
	"net/netip"
	"slices"
	"strings"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy"
)

// Config are the settings Render needs besides the snapshot.
type Config struct {
	// Scheduler is the node's default scheduler (rr when empty); a
	// service port's IPVSScheduler overrides it.
	Scheduler string
	// RejectUnknownPorts rejects new connections to a service address on
	// a port no service uses (kube-proxy's KUBE-IPVS-FILTER). Off, such a
	// packet reaches the node's own sockets, since the address is local.
	RejectUnknownPorts bool
}

// Render turns a snapshot into the IPVS mode's plan. It is pure: the same
// snapshot and config give the same plan.
func Render(d *proxy.Desired, cfg Config) *Ruleset {
	r := &Ruleset{NodeIPs: slices.Clone(d.Node.IPs), Sets: newSets()}
	rd := renderer{r: r, d: d, cfg: cfg, vs: map[string]int{}, addrs: map[netip.Addr]bool{}, marks: shortCircuitMarks(d)}
	for _, p := range d.Services {
		rd.port(p)
	}
	slices.SortFunc(r.VirtualServers, compareVS)
	for a := range rd.addrs {
		r.Addresses = append(r.Addresses, a)
		r.Set(setIPVSIPs).Entries = append(r.Set(setIPVSIPs).Entries, kernel.IPSetEntry{IP: a})
	}
	slices.SortFunc(r.Addresses, netip.Addr.Compare)
	for i := range r.Sets {
		r.Sets[i].Entries = sortEntries(r.Sets[i].Entries)
	}
	renderChains(r, d.Config.ClusterCIDRs, d.Config.MasqueradeAll, cfg.RejectUnknownPorts)
	return r
}

type renderer struct {
	r     *Ruleset
	d     *proxy.Desired
	cfg   Config
	vs    map[string]int // key -> index in r.VirtualServers
	addrs map[netip.Addr]bool
	marks map[model.ServicePortName]uint32
}

func (rd *renderer) add(set string, e kernel.IPSetEntry) {
	s := rd.r.Set(set)
	s.Entries = append(s.Entries, e)
}

func ipPort(a netip.Addr, proto model.Protocol, port int) kernel.IPSetEntry {
	return kernel.IPSetEntry{IP: a, Proto: strings.ToLower(string(proto)), Port: uint16(port)}
}

func (rd *renderer) isNodeIP(a netip.Addr) bool { return slices.Contains(rd.d.Node.IPs, a) }

// port renders one service port: its virtual servers, addresses and set
// entries.
func (rd *renderer) port(p *proxy.Port) {
	proto := p.Name.Protocol
	sched, flags := rd.scheduler(p)
	base := kernel.VirtualServer{Protocol: string(proto), Scheduler: sched, Flags: flags}
	if p.AffinityTimeout > 0 {
		base.Flags |= kernel.IPVSFlagPersistent
		base.Timeout = uint32(p.AffinityTimeout)
	}
	internal, external := p.InternalEndpoints(), p.ExternalEndpoints()

	for _, e := range p.Endpoints {
		if e.NodeName == rd.d.Node.Name {
			rd.add(setLoopBack, kernel.IPSetEntry{IP: e.IP, Proto: strings.ToLower(string(proto)), Port: uint16(e.Port), IP2: e.IP})
		}
	}
	for _, ip := range p.ClusterIPs {
		rd.vserver(p, base, ip, p.Port, KindClusterIP, internal, true)
		rd.add(setClusterIP, ipPort(ip, proto, p.Port))
		if p.InternalPolicyLocal && len(internal) == 0 && p.HasEndpoints {
			rd.add(setNoLocalEndpoints, ipPort(ip, proto, p.Port))
		}
	}
	var externalAddrs []kernel.IPSetEntry
	for _, ip := range p.ExternalIPs {
		rd.vserver(p, base, ip, p.Port, KindExternalIP, external, !rd.isNodeIP(ip))
		if p.ExternalPolicyLocal {
			rd.add(setExternalIPLocal, ipPort(ip, proto, p.Port))
		} else {
			rd.add(setExternalIP, ipPort(ip, proto, p.Port))
		}
		externalAddrs = append(externalAddrs, ipPort(ip, proto, p.Port))
	}
	for _, ip := range p.LoadBalancerIPs {
		rd.vserver(p, base, ip, p.Port, KindLoadBalancer, external, !rd.isNodeIP(ip))
		rd.add(setLoadBalancer, ipPort(ip, proto, p.Port))
		if p.ExternalPolicyLocal {
			rd.add(setLoadBalancerLocal, ipPort(ip, proto, p.Port))
		}
		if len(p.LoadBalancerSourceRanges) > 0 {
			rd.sourceRanges(p, ip)
		}
		externalAddrs = append(externalAddrs, ipPort(ip, proto, p.Port))
	}
	if p.NodePort != 0 {
		externalAddrs = append(externalAddrs, rd.nodePort(p, base, external)...)
	}
	if p.HealthCheckNodePort != 0 {
		rd.add(setHealthCheck, kernel.IPSetEntry{Port: uint16(p.HealthCheckNodePort)})
	}
	if !p.ExternalPolicyLocal || len(externalAddrs) == 0 {
		return
	}
	if len(external) == 0 && p.HasEndpoints {
		for _, e := range externalAddrs {
			rd.add(setNoLocalEndpoints, e)
		}
	}
	if len(p.Cluster) > 0 && rd.marks[p.Name] != 0 {
		rd.shortCircuit(p, base, externalAddrs)
	}
}

func (rd *renderer) nodePort(p *proxy.Port, base kernel.VirtualServer, eps []model.Endpoint) []kernel.IPSetEntry {
	proto := p.Name.Protocol
	var addrs []kernel.IPSetEntry
	for _, ip := range rd.d.NodePortIPs {
		if ip.IsLoopback() {
			// IPVS cannot masquerade a connection from 127.0.0.1 to a
			// remote real server; kube-proxy's IPVS mode skips loopback too.
			continue
		}
		rd.vserver(p, base, ip, p.NodePort, KindNodePort, eps, false)
		addrs = append(addrs, ipPort(ip, proto, p.NodePort))
	}
	bitmap := kernel.IPSetEntry{Port: uint16(p.NodePort)}
	switch proto {
	case model.ProtocolTCP:
		rd.add(setNodePortTCP, bitmap)
		if p.ExternalPolicyLocal {
			rd.add(setNodePortLocalTCP, bitmap)
		}
	case model.ProtocolUDP:
		rd.add(setNodePortUDP, bitmap)
		if p.ExternalPolicyLocal {
			rd.add(setNodePortLocalUDP, bitmap)
		}
	case model.ProtocolSCTP:
		for _, e := range addrs {
			rd.add(setNodePortSCTP, e)
			if p.ExternalPolicyLocal {
				rd.add(setNodePortLocalSCTP, e)
			}
		}
	}
	return addrs
}

// sourceRanges lets only loadBalancerSourceRanges reach a LoadBalancer
// IP; the node itself too when a range holds one of its addresses (its own
// connections to the local LB IP come from the LB IP, as kube-proxy notes).
func (rd *renderer) sourceRanges(p *proxy.Port, ip netip.Addr) {
	proto := p.Name.Protocol
	rd.add(setLoadBalancerFW, ipPort(ip, proto, p.Port))
	fromNode := false
	for _, c := range p.LoadBalancerSourceRanges {
		e := ipPort(ip, proto, p.Port)
		e.Net2 = c.Masked()
		rd.add(setLBSourceCIDR, e)
		fromNode = fromNode || slices.ContainsFunc(rd.d.Node.IPs, c.Contains)
	}
	if fromNode {
		e := ipPort(ip, proto, p.Port)
		e.IP2 = ip
		rd.add(setLBSourceIP, e)
	}
}

// shortCircuit renders the firewall-mark virtual server that sends this
// node's and its pods' traffic for an eTP Local service's external
// addresses to all cluster endpoints, and the entries that mark it.
func (rd *renderer) shortCircuit(p *proxy.Port, base kernel.VirtualServer, addrs []kernel.IPSetEntry) {
	mark := rd.marks[p.Name]
	vs := base
	vs.FWMark, vs.Protocol = mark, ""
	rd.vserverKey(p, vs, KindShortCircuit, p.Cluster)
	for _, e := range addrs {
		e.SkbMark = mark
		rd.add(setShortCircuit, e)
	}
}

func (rd *renderer) vserver(p *proxy.Port, base kernel.VirtualServer, ip netip.Addr, port int, kind Kind, eps []model.Endpoint, bind bool) {
	if !ip.Is4() {
		rd.r.Warnings = append(rd.r.Warnings, fmt.Sprintf("%s: %s address %s is not IPv4; skipped", p.Name, kind, ip))
		return
	}
	vs := base
	vs.Address, vs.Port = ip, uint16(port)
	if rd.vserverKey(p, vs, kind, eps) && bind {
		rd.addrs[ip] = true
	}
}

func (rd *renderer) vserverKey(p *proxy.Port, vs kernel.VirtualServer, kind Kind, eps []model.Endpoint) bool {
	key := vs.String()
	if i, ok := rd.vs[key]; ok {
		other := rd.r.VirtualServers[i]
		rd.r.Warnings = append(rd.r.Warnings, fmt.Sprintf("%s: %s %s is %s's %s already; skipped", p.Name, kind, key, other.Service, other.Kind))
		return false
	}
	v := VirtualServer{VirtualServer: vs, Service: p.Name, Kind: kind}
	for _, e := range eps {
		v.RealServers = append(v.RealServers, kernel.RealServer{Address: e.AddrPort(), Weight: 1})
	}
	slices.SortFunc(v.RealServers, func(a, b kernel.RealServer) int { return a.Address.Compare(b.Address) })
	v.RealServers = slices.CompactFunc(v.RealServers, func(a, b kernel.RealServer) bool { return a.Address == b.Address })
	rd.vs[key] = len(rd.r.VirtualServers)
	rd.r.VirtualServers = append(rd.r.VirtualServers, v)
	rd.recordName(p, v)
	return true
}

// scheduler picks the port's scheduler: the service's own (its
// kdive.dev/ipvs-scheduler annotation), else the node's, else rr; an
// unknown name falls back with a warning.
// sh and mh skip a weight-0 (draining) real server rather than failing the
// connection (their -fallback flag); mh also hashes the source port, as
// kube-proxy sets it, so one client's connections spread.
func (rd *renderer) scheduler(p *proxy.Port) (string, uint32) {
	sched := defaultScheduler
	if rd.cfg.Scheduler != "" {
		sched = rd.cfg.Scheduler
	}
	if s := p.IPVSScheduler; s != "" {
		if ValidScheduler(s) {
			sched = s
		} else {
			rd.r.Warnings = append(rd.r.Warnings, fmt.Sprintf("%s: unknown ipvs scheduler %q; using %s", p.Name, s, sched))
		}
	}
	switch sched {
	case "sh":
		return sched, kernel.IPVSFlagSched1
	case "mh":
		return sched, kernel.IPVSFlagSched1 | kernel.IPVSFlagSched2
	}
	return sched, 0
}

// shortCircuitMarks gives every eTP Local port with external addresses a
// firewall mark: shortCircuitBit | slot<<16, the slot hashed from its
// name and probing forward on collisions in name order, so marks stay put
// as other services come and go. Past maxSlot such ports (a cluster with
// over 4095 eTP Local external ports) the rest get none: no short circuit.
func shortCircuitMarks(d *proxy.Desired) map[model.ServicePortName]uint32 {
	marks := map[model.ServicePortName]uint32{}
	used := map[uint32]bool{}
	for _, p := range d.Services { // sorted by name
		if !p.ExternalPolicyLocal || !p.ExternallyAccessible() {
			continue
		}
		h := fnv.New32a()
		h.Write([]byte(p.Name.String() + "/" + string(p.Name.Protocol)))
		start := h.Sum32() % maxSlot
		for i := range uint32(maxSlot) {
			slot := (start+i)%maxSlot + 1
			if !used[slot] {
				used[slot] = true
				marks[p.Name] = shortCircuitBit | slot<<16
				break
			}
		}
	}
	return marks
}
