package podnet_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/podnet"
)

// Address plan of this package's tests (nothing leaves the namespaces the
// tests create):
//
//	zone-a  192.0.2.0/24     gateway .1 (the router); node-1 .11, node-2 .12
//	zone-b  198.51.100.0/24  gateway .1 (the router); node-3 .13
//	pod blocks 10.244.N.0/24 (node-N); the test pod on node-N is 10.244.N.5
//	routed pods: 10.244.N.5/32, gateway 169.254.1.1 (the host end of the veth)
//	bridge pods: 10.244.N.5/24 behind kube-bridge 10.244.N.1/24

func node(name, ip, block string) model.Node {
	n := model.Node{Name: name}
	if ip != "" {
		n.IPs = []netip.Addr{netip.MustParseAddr(ip)}
	}
	if block != "" {
		n.PodCIDR = netip.MustParsePrefix(block)
	}
	return n
}

var (
	node1 = node("node-1", "192.0.2.11", "10.244.1.0/24")
	node2 = node("node-2", "192.0.2.12", "10.244.2.0/24")
	node3 = node("node-3", "198.51.100.13", "10.244.3.0/24")
)

// renderState is node-1's view of the test cluster plus a node that has no
// pod block yet.
func renderState() podnet.State {
	return podnet.State{
		Local: node1, Subnet: netip.MustParsePrefix("192.0.2.0/24"), UplinkMTU: 1500,
		Gateways: map[netip.Addr]netip.Addr{node3.IP(): netip.MustParseAddr("192.0.2.1")},
		Peers:    []model.Node{node3, node1, node("node-4", "192.0.2.14", ""), node2},
	}
}

func network(i model.Interface, e model.Encap, p model.EncapPolicy) model.PodNetwork {
	return model.PodNetwork{Interface: i, Encap: e, EncapPolicy: p}
}

const (
	routed, bridge = model.InterfaceRouted, model.InterfaceBridge
	cross, always  = model.EncapCrossSubnet, model.EncapAlways
)

// TestRenderModes renders node-1's plan for every interface × encap ×
// encapPolicy and compares the whole text (after the header line).
func TestRenderModes(t *testing.T) {
	cases := []struct {
		name string
		nets []model.PodNetwork
		want string
	}{{
		name: "encap none",
		nets: []model.PodNetwork{network(routed, "none", cross), network(routed, "none", always),
			network(bridge, "none", cross), network(bridge, "none", always)},
		want: `
sysctl net.ipv4.ip_forward=1  # forward pod traffic between pods, the uplink and tunnels
route blackhole 10.244.1.0/24 proto 107 metric 1024  # own pod block of node-1: drop traffic to addresses no pod holds
route 10.244.2.0/24 via 192.0.2.12 dev eth0 proto 107  # pod block 10.244.2.0/24 of node-2 via eth0 (direct, encap none)
route 10.244.3.0/24 via 192.0.2.1 dev eth0 proto 107  # pod block 10.244.3.0/24 of node-3 via eth0 and underlay gateway 192.0.2.1 (direct, encap none: the underlay must route pod addresses)
skip node-4  # no pod block (spec.podCIDR) yet
`,
	}, {
		name: "preset A: routed, ipip, cross-subnet",
		nets: []model.PodNetwork{network(routed, "ipip", cross)},
		want: `
link tunl0 ipip local any remote any mtu 1480 addr 10.244.1.0/32  # IPIP fallback device: sends to each route's gateway and receives from any peer; 10.244.1.0 is this node's source toward remote pods
sysctl net.ipv4.ip_forward=1  # forward pod traffic between pods, the uplink and tunnels
sysctl net.ipv4.conf.tunl0.rp_filter=2  # loose reverse-path filter: paths are asymmetric while a mode change rolls out
route blackhole 10.244.1.0/24 proto 107 metric 1024  # own pod block of node-1: drop traffic to addresses no pod holds
route 10.244.2.0/24 via 192.0.2.12 dev eth0 proto 107  # pod block 10.244.2.0/24 of node-2 via eth0 (direct, same subnet)
route 10.244.3.0/24 via 198.51.100.13 dev tunl0 onlink proto 107  # pod block 10.244.3.0/24 of node-3 via tunl0 (IPIP, cross-subnet)
skip node-4  # no pod block (spec.podCIDR) yet
`,
	}, {
		name: "preset B: routed, ipip, always",
		nets: []model.PodNetwork{network(routed, "ipip", always)},
		want: `
link tunl0 ipip local any remote any mtu 1480 addr 10.244.1.0/32  # IPIP fallback device: sends to each route's gateway and receives from any peer; 10.244.1.0 is this node's source toward remote pods
sysctl net.ipv4.ip_forward=1  # forward pod traffic between pods, the uplink and tunnels
sysctl net.ipv4.conf.tunl0.rp_filter=2  # loose reverse-path filter: paths are asymmetric while a mode change rolls out
route blackhole 10.244.1.0/24 proto 107 metric 1024  # own pod block of node-1: drop traffic to addresses no pod holds
route 10.244.2.0/24 via 192.0.2.12 dev tunl0 onlink proto 107  # pod block 10.244.2.0/24 of node-2 via tunl0 (IPIP, always)
route 10.244.3.0/24 via 198.51.100.13 dev tunl0 onlink proto 107  # pod block 10.244.3.0/24 of node-3 via tunl0 (IPIP, always)
skip node-4  # no pod block (spec.podCIDR) yet
`,
	}, {
		name: "preset C: bridge, ipip, cross-subnet",
		nets: []model.PodNetwork{network(bridge, "ipip", cross)},
		want: `
link tun-6c610a90b8 ipip local 192.0.2.11 remote 198.51.100.13 mtu 1480 addr 10.244.1.0/32  # IPIP tunnel to node-3 (198.51.100.13); 10.244.1.0 is this node's source toward its pods
sysctl net.ipv4.ip_forward=1  # forward pod traffic between pods, the uplink and tunnels
sysctl net.ipv4.conf.tun-6c610a90b8.rp_filter=2  # loose reverse-path filter: paths are asymmetric while a mode change rolls out
route blackhole 10.244.1.0/24 proto 107 metric 1024  # own pod block of node-1: drop traffic to addresses no pod holds
route 10.244.2.0/24 via 192.0.2.12 dev eth0 proto 107  # pod block 10.244.2.0/24 of node-2 via eth0 (direct, same subnet)
route 10.244.3.0/24 via 198.51.100.13 dev tun-6c610a90b8 onlink proto 107  # pod block 10.244.3.0/24 of node-3 via tun-6c610a90b8 (IPIP tunnel to 198.51.100.13, cross-subnet)
skip node-4  # no pod block (spec.podCIDR) yet
`,
	}, {
		name: "bridge, ipip, always",
		nets: []model.PodNetwork{network(bridge, "ipip", always)},
		want: `
link tun-c221929cc1 ipip local 192.0.2.11 remote 192.0.2.12 mtu 1480 addr 10.244.1.0/32  # IPIP tunnel to node-2 (192.0.2.12); 10.244.1.0 is this node's source toward its pods
link tun-6c610a90b8 ipip local 192.0.2.11 remote 198.51.100.13 mtu 1480 addr 10.244.1.0/32  # IPIP tunnel to node-3 (198.51.100.13); 10.244.1.0 is this node's source toward its pods
sysctl net.ipv4.ip_forward=1  # forward pod traffic between pods, the uplink and tunnels
sysctl net.ipv4.conf.tun-c221929cc1.rp_filter=2  # loose reverse-path filter: paths are asymmetric while a mode change rolls out
sysctl net.ipv4.conf.tun-6c610a90b8.rp_filter=2  # loose reverse-path filter: paths are asymmetric while a mode change rolls out
route blackhole 10.244.1.0/24 proto 107 metric 1024  # own pod block of node-1: drop traffic to addresses no pod holds
route 10.244.2.0/24 via 192.0.2.12 dev tun-c221929cc1 onlink proto 107  # pod block 10.244.2.0/24 of node-2 via tun-c221929cc1 (IPIP tunnel to 192.0.2.12, always)
route 10.244.3.0/24 via 198.51.100.13 dev tun-6c610a90b8 onlink proto 107  # pod block 10.244.3.0/24 of node-3 via tun-6c610a90b8 (IPIP tunnel to 198.51.100.13, always)
skip node-4  # no pod block (spec.podCIDR) yet
`,
	}, {
		name: "preset D: vxlan, cross-subnet",
		nets: []model.PodNetwork{network(routed, "vxlan", cross), network(bridge, "vxlan", cross)},
		want: `
link vxlan.kdive vxlan id 4096 local 192.0.2.11 dev eth0 dstport 4789 nolearning mac 0a:6b:c0:00:02:0b mtu 1450 addr 10.244.1.0/32  # VXLAN device, VTEP 10.244.1.0 with a MAC derived from 192.0.2.11; static FDB, no learning, no multicast
sysctl net.ipv4.ip_forward=1  # forward pod traffic between pods, the uplink and tunnels
sysctl net/ipv4/conf/vxlan.kdive/rp_filter=2  # loose reverse-path filter: paths are asymmetric while a mode change rolls out
fdb 0a:6b:c6:33:64:0d dst 198.51.100.13 dev vxlan.kdive self permanent  # node-3's VTEP is at 198.51.100.13
neigh 10.244.3.0 lladdr 0a:6b:c6:33:64:0d dev vxlan.kdive permanent  # node-3's VTEP address
route blackhole 10.244.1.0/24 proto 107 metric 1024  # own pod block of node-1: drop traffic to addresses no pod holds
route 10.244.2.0/24 via 192.0.2.12 dev eth0 proto 107  # pod block 10.244.2.0/24 of node-2 via eth0 (direct, same subnet)
route 10.244.3.0/24 via 10.244.3.0 dev vxlan.kdive onlink proto 107  # pod block 10.244.3.0/24 of node-3 via vxlan.kdive (VXLAN, cross-subnet)
skip node-4  # no pod block (spec.podCIDR) yet
`,
	}, {
		name: "vxlan, always",
		nets: []model.PodNetwork{network(routed, "vxlan", always), network(bridge, "vxlan", always)},
		want: `
link vxlan.kdive vxlan id 4096 local 192.0.2.11 dev eth0 dstport 4789 nolearning mac 0a:6b:c0:00:02:0b mtu 1450 addr 10.244.1.0/32  # VXLAN device, VTEP 10.244.1.0 with a MAC derived from 192.0.2.11; static FDB, no learning, no multicast
sysctl net.ipv4.ip_forward=1  # forward pod traffic between pods, the uplink and tunnels
sysctl net/ipv4/conf/vxlan.kdive/rp_filter=2  # loose reverse-path filter: paths are asymmetric while a mode change rolls out
fdb 0a:6b:c0:00:02:0c dst 192.0.2.12 dev vxlan.kdive self permanent  # node-2's VTEP is at 192.0.2.12
fdb 0a:6b:c6:33:64:0d dst 198.51.100.13 dev vxlan.kdive self permanent  # node-3's VTEP is at 198.51.100.13
neigh 10.244.2.0 lladdr 0a:6b:c0:00:02:0c dev vxlan.kdive permanent  # node-2's VTEP address
neigh 10.244.3.0 lladdr 0a:6b:c6:33:64:0d dev vxlan.kdive permanent  # node-3's VTEP address
route blackhole 10.244.1.0/24 proto 107 metric 1024  # own pod block of node-1: drop traffic to addresses no pod holds
route 10.244.2.0/24 via 10.244.2.0 dev vxlan.kdive onlink proto 107  # pod block 10.244.2.0/24 of node-2 via vxlan.kdive (VXLAN, always)
route 10.244.3.0/24 via 10.244.3.0 dev vxlan.kdive onlink proto 107  # pod block 10.244.3.0/24 of node-3 via vxlan.kdive (VXLAN, always)
skip node-4  # no pod block (spec.podCIDR) yet
`,
	}}
	seen := map[model.PodNetwork]bool{}
	for _, c := range cases {
		for _, nw := range c.nets {
			seen[nw] = true
			t.Run(c.name+"/"+string(nw.Interface)+"/"+string(nw.EncapPolicy), func(t *testing.T) {
				p, err := podnet.Render(podnet.Options{Network: nw, Uplink: "eth0"}, renderState())
				if err != nil {
					t.Fatal(err)
				}
				header, body, _ := strings.Cut(p.String(), "\n")
				wantHeader := "# node-1 192.0.2.11 block 10.244.1.0/24: " + string(nw.Interface) + ", " + string(nw.Encap) +
					", " + string(nw.EncapPolicy) + "; uplink eth0 mtu 1500 in 192.0.2.0/24"
				if header != wantHeader {
					t.Errorf("header = %q, want %q", header, wantHeader)
				}
				want := strings.TrimPrefix(c.want, "\n")
				if nw.Interface == routed {
					want = strings.Replace(want, blackholeLine, blackholeLine+routedGatewayLine, 1)
				} else {
					want = strings.Replace(want, forwardLine, forwardLine+bridgeNetfilterLine, 1)
				}
				if body != want {
					t.Errorf("plan:\n%s\nwant:\n%s", body, want)
				}
			})
		}
	}
	if len(seen) != 12 {
		t.Errorf("cases cover %d of the 12 interface × encap × encapPolicy combinations", len(seen))
	}
}

// Every plan has the blackhole; routed mode follows it with the route that
// lets proxy ARP answer for the pods' gateway.
const (
	blackholeLine     = "route blackhole 10.244.1.0/24 proto 107 metric 1024  # own pod block of node-1: drop traffic to addresses no pod holds\n"
	routedGatewayLine = "route 169.254.1.1/32 dev lo scope link proto 107  # routed pods' gateway: lets proxy ARP answer for it on a node without a default route\n"
	// Bridge mode adds br_netfilter's sysctl after ip_forward.
	forwardLine         = "sysctl net.ipv4.ip_forward=1  # forward pod traffic between pods, the uplink and tunnels\n"
	bridgeNetfilterLine = "sysctl net.bridge.bridge-nf-call-iptables=1  # service replies between pods on kube-bridge must pass netfilter to be un-NATed (br_netfilter)\n"
)
