// Package bed is the real-kernel test bed of the proxy modes: network
// namespaces laid out as proxytest's Fixture addresses them, an echo server
// at every endpoint, and Run, which sends the case table's packets through
// a mode's rules as real connections. A mode's test makes a Bed, a backend
// on b.Node, and calls Run; its own checks use the same bed and helpers.
//
// It must not import the mode packages (their tests import it).
package bed

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/ktest"
	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy"
	"github.com/kdive/kdive/internal/proxy/proxytest"
)

// The address plan, written down once (namespaces the bed creates, and
// nothing else):
//
//	client 172.20.1.20/24, 198.51.100.10, 192.0.2.99 --eth0  ext0-- node 172.20.1.10/24
//	upstream 10.255.0.2/24, lo 10.1.0.0/16 203.0.113.0/24 --eth0  up0-- node 10.255.0.1/24, default route
//	pods of node-1: 10.0.1.2 .3 .4 .12 --eth0  pods0-- node 10.0.0.1/32
//	pods of node-2: 10.0.2.x           --eth0  pods1-- node 10.0.0.1/32
//	pods of node-3: 10.0.3.x           --eth0  pods2-- node 10.0.0.1/32
//	the client pod: 10.0.1.9           --eth0  pods3-- node 10.0.0.1/32  (LocalPod, no endpoint)
//
// The node (node-1, zone-a) runs the mode's rules with ip_forward on. The
// pod network is routed: every pod address is a /32 the node routes to its
// namespace's veth, and the pods' gateway is 10.0.0.1 (on-link), which the
// node holds on each veth; so all pod traffic, pod to pod and hairpin too,
// is routed through the node, and masqueraded traffic reaches an endpoint
// from MasqIP. (A bridge would do for a pod network but not for a test
// bed: where br_netfilter is loaded, a DNAT back into the bridge is
// bridged, not routed, and hairpin traffic is lost.) The pods that the
// Fixture places on node-2 and node-3 are here too: only their NodeName
// says they are elsewhere, which is what the traffic policies read. The
// client holds the Fixture's outside addresses and routes the service
// ranges (10.1.0.0/16, 203.0.113.0/24) and pods to the node. A packet that
// no rule takes reaches a listener at its own destination (sinks): on the
// node, or upstream, where the node's default route leads and which holds
// the service ranges.
var (
	NodeIP     = proxytest.NodeIP
	ClientIP   = netip.MustParseAddr("172.20.1.20")
	MasqIP     = netip.MustParseAddr("10.0.0.1")
	upstreamIP = netip.MustParseAddr("10.255.0.2")
	nodeUpIP   = netip.MustParseAddr("10.255.0.1")
)

// podPorts are the ports every pod address answers on, TCP and UDP (the
// Fixture's endpoint ports).
var podPorts = []int{53, 8080, 8443}

// A Bed is the namespaces of the plan, built for one test.
type Bed struct {
	Node, Client, Upstream *kernel.NetNS
	// byAddr is the namespace that holds each client and pod address.
	byAddr map[netip.Addr]*kernel.NetNS
}

// New builds the bed, with an echo server at every pod address, and tears
// it down when the test ends. It skips (fails in the test VM) without root
// or veth; a mode's test requires its own kernel features first.
func New(t *testing.T) *Bed {
	t.Helper()
	ktest.RequireFeature(t, kernel.FeatureVeth)
	b := &Bed{Node: ktest.NewNetNS(t), Client: ktest.NewNetNS(t), Upstream: ktest.NewNetNS(t), byAddr: map[netip.Addr]*kernel.NetNS{}}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("test bed: %v", err)
		}
	}
	must(b.Node.Sysctl("net.ipv4.ip_forward", "1"))
	// Traffic between two addresses of one pod namespace leaves the node
	// by the veth it came in by: left on, redirects would send a pod to
	// its peer directly, around the NAT.
	for _, dev := range []string{"all", "default"} {
		must(b.Node.Sysctl("net/ipv4/conf/"+dev+"/send_redirects", "0"))
	}

	// The client and upstream, each on a /24 with the node.
	outside := func(ns *kernel.NetNS, dev string, nodeAddr, addr netip.Addr) {
		must(b.Node.AddVeth(dev, kernel.LinkAttrs{}, ns, "eth0", kernel.LinkAttrs{}))
		must(b.Node.AddAddr(dev, netip.PrefixFrom(nodeAddr, 24)))
		must(b.Node.LinkUp(dev))
		must(ns.AddAddr("eth0", netip.PrefixFrom(addr, 24)))
		must(ns.LinkUp("eth0"))
	}
	outside(b.Client, "ext0", NodeIP, ClientIP)
	outside(b.Upstream, "up0", nodeUpIP, upstreamIP)
	must(b.Node.ReplaceRoute(kernel.Route{Gateway: upstreamIP, Dev: "up0"}))
	must(b.Upstream.ReplaceRoute(kernel.Route{Gateway: nodeUpIP, Dev: "eth0"}))
	for _, dst := range slices.Concat(serviceRanges, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16")}) {
		must(b.Client.ReplaceRoute(kernel.Route{Dst: dst.Masked(), Gateway: NodeIP}))
	}
	b.byAddr[ClientIP] = b.Client
	for _, a := range []netip.Addr{proxytest.ExternalIP, proxytest.Stranger} {
		must(b.Client.AddAddr("eth0", netip.PrefixFrom(a, 32)))
		must(b.Node.ReplaceRoute(kernel.Route{Dst: netip.PrefixFrom(a, 32), Gateway: ClientIP}))
		b.byAddr[a] = b.Client
	}

	// The pods, one namespace per node they are declared on.
	for i, addrs := range podGroups() {
		ns := ktest.NewNetNS(t)
		host := fmt.Sprintf("pods%d", i)
		must(b.Node.AddVeth(host, kernel.LinkAttrs{}, ns, "eth0", kernel.LinkAttrs{}))
		must(b.Node.AddAddr(host, netip.PrefixFrom(MasqIP, 32)))
		must(b.Node.LinkUp(host))
		must(ns.LinkUp("eth0"))
		for _, a := range addrs {
			must(ns.AddAddr("eth0", netip.PrefixFrom(a, 32)))
			must(b.Node.ReplaceRoute(kernel.Route{Dst: netip.PrefixFrom(a, 32), Dev: host, Scope: unix.RT_SCOPE_LINK}))
			b.byAddr[a] = ns
		}
		must(ns.ReplaceRoute(kernel.Route{Gateway: MasqIP, Dev: "eth0", OnLink: true}))
		for _, a := range addrs {
			for _, p := range podPorts {
				serveTCP(t, ns, netip.AddrPortFrom(a, uint16(p)))
				serveUDP(t, ns, netip.AddrPortFrom(a, uint16(p)))
			}
		}
	}
	b.sinks(t, must)
	return b
}

// podGroups is the Fixture's endpoint addresses by the node they are
// declared on, then the client pod on its own.
func podGroups() [][]netip.Addr {
	byNode := map[string][]netip.Addr{}
	for _, p := range proxytest.Fixture().Services {
		for _, e := range p.Endpoints {
			if !slices.Contains(byNode[e.NodeName], e.IP) {
				byNode[e.NodeName] = append(byNode[e.NodeName], e.IP)
			}
		}
	}
	var groups [][]netip.Addr
	for _, n := range slices.Sorted(maps.Keys(byNode)) {
		groups = append(groups, byNode[n])
	}
	return append(groups, []netip.Addr{proxytest.LocalPod})
}

// sinks makes a TCP packet that no rule takes reach a listener at its own
// destination, so that Run reads it as ACCEPT and tells it from the work
// of a REJECT or a DROP rule: upstream holds the service ranges (on lo, all
// their addresses are its own), the node its own addresses (and cluster IPs
// a mode puts on a local device), and both listen at every TCP port of the
// cases. (UDP has one case, a DNAT: no UDP sinks.)
func (b *Bed) sinks(t *testing.T, must func(error)) {
	for _, p := range serviceRanges {
		must(b.Upstream.AddAddr("lo", p))
	}
	ports := map[int]bool{}
	for _, c := range proxytest.Cases() {
		p := c.Packet
		inRanges := slices.ContainsFunc(serviceRanges, func(r netip.Prefix) bool { return r.Contains(p.Dst) })
		if c.Want.Verdict == proxy.ACCEPT && b.byAddr[p.Dst] == nil && p.Dst != NodeIP && !p.Dst.IsLoopback() && !inRanges {
			t.Fatalf("test bed: no sink answers at %s (case %q)", p.Dst, c.Name)
		}
		if p.Proto != model.ProtocolTCP || ports[p.Port] {
			continue
		}
		ports[p.Port] = true
		for _, ns := range []*kernel.NetNS{b.Upstream, b.Node} {
			serveTCP(t, ns, netip.AddrPortFrom(netip.IPv4Unspecified(), uint16(p.Port)))
		}
	}
}

// serviceRanges hold the Fixture's cluster, external and LoadBalancer IPs
// (an address in each, as upstream's lo holds them).
var serviceRanges = []netip.Prefix{netip.MustParsePrefix("10.1.255.254/16"), netip.MustParsePrefix("203.0.113.254/24")}

// ns is the namespace a packet leaves from.
func (b *Bed) ns(p proxytest.Packet) *kernel.NetNS {
	if p.FromNode {
		return b.Node
	}
	return b.byAddr[p.Src]
}

// Node is the Fixture's node, which Desired names.
var Node = proxytest.Fixture().Node

// EP is a ready endpoint at a pod address of the plan.
func EP(addr string, port int, node string) model.Endpoint {
	return model.Endpoint{IP: netip.MustParseAddr(addr), Port: port, NodeName: node, Ready: true, Serving: true}
}

// Service is a port of a cluster IP service in namespace default.
func Service(name, clusterIP string, port int, proto model.Protocol, eps ...model.Endpoint) model.ServicePort {
	return model.ServicePort{
		Name:       model.ServicePortName{Namespace: "default", Name: name, Protocol: proto},
		ClusterIPs: []netip.Addr{netip.MustParseAddr(clusterIP)}, Port: port, Endpoints: eps,
	}
}

// Desired is the snapshot of ports on the bed's node, in the Fixture's
// configuration, in the order the tracker keeps.
func Desired(sps ...model.ServicePort) *proxy.Desired {
	d := proxy.NewDesired(proxytest.Fixture().Config, Node)
	for _, sp := range sps {
		d.Services = append(d.Services, proxy.Resolve(sp, Node))
	}
	slices.SortFunc(d.Services, func(a, b *proxy.Port) int { return a.Name.Compare(b.Name) })
	return d
}
