package diag

import (
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/kdive/kdive/internal/cni/ipam"
	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/podnet"
)

// The hand-made cluster the annotators are tested on, seen from node-1
// (routed mode). Every way of reaching a peer appears once, which no real
// cluster mixes, so each meaning is covered by one fixture:
//
//	node-1 172.20.1.10 zone-a 10.0.1.0/24  this node
//	node-2 172.20.1.11 zone-a 10.0.2.0/24  direct over eth0
//	node-3 172.20.2.10 zone-b 10.0.3.0/24  IPIP through tunl0
//	node-4 172.20.2.11 zone-b 10.0.4.0/24  VXLAN
//	node-5 172.20.3.10 zone-c 10.0.5.0/24  bridge mode's per-peer IPIP tunnel
//	10.0.9.0/24 an agent route no node owns (stale)
//
// Pods on node-1: coredns-0 10.0.1.2 (veth with the CNI alias), web-1
// 10.0.1.3 (veth without alias, found by its /32), 10.0.1.9 allocated but
// held by no pod (leak), pending-0 not attached.

var (
	pfx  = netip.MustParsePrefix
	addr = netip.MustParseAddr
)

func fixtureTopology() *Topology {
	return &Topology{
		Lab: "t", Node: "node-1", ProxyMode: "nftables", Uplink: "eth0",
		Network: model.PodNetwork{Interface: model.InterfaceRouted, Encap: model.EncapVXLAN, EncapPolicy: model.EncapCrossSubnet},
		Nodes: []Node{
			{Name: "node-1", IP: addr("172.20.1.10"), Subnet: pfx("172.20.1.0/24"), SubnetName: "zone-a", PodCIDR: pfx("10.0.1.0/24"),
				IPAM: &IPAMState{Allocations: []ipam.Allocation{
					{Addr: addr("10.0.1.2"), Attachment: ipam.Attachment{ContainerID: "c1", IfName: "eth0"}},
					{Addr: addr("10.0.1.3"), Attachment: ipam.Attachment{ContainerID: "c2", IfName: "eth0"}},
					{Addr: addr("10.0.1.9"), Attachment: ipam.Attachment{ContainerID: "c9", IfName: "eth0"}},
				}}},
			{Name: "node-2", IP: addr("172.20.1.11"), Subnet: pfx("172.20.1.0/24"), SubnetName: "zone-a", PodCIDR: pfx("10.0.2.0/24"),
				IPAM: &IPAMState{Allocations: []ipam.Allocation{{Addr: addr("10.0.2.2"), Attachment: ipam.Attachment{ContainerID: "c4", IfName: "eth0"}}}}},
			{Name: "node-3", IP: addr("172.20.2.10"), Subnet: pfx("172.20.2.0/24"), SubnetName: "zone-b", PodCIDR: pfx("10.0.3.0/24")},
			{Name: "node-4", IP: addr("172.20.2.11"), Subnet: pfx("172.20.2.0/24"), SubnetName: "zone-b", PodCIDR: pfx("10.0.4.0/24")},
			{Name: "node-5", IP: addr("172.20.3.10"), Subnet: pfx("172.20.3.0/24"), SubnetName: "zone-c", PodCIDR: pfx("10.0.5.0/24")},
		},
		Pods: []Pod{
			{Namespace: "kube-system", Name: "coredns-0", Node: "node-1", IP: addr("10.0.1.2"), NetNS: "/run/netns/p1", ContainerID: "c1", IfName: "eth0"},
			{Namespace: "default", Name: "web-1", Node: "node-1", IP: addr("10.0.1.3"), NetNS: "/run/netns/p2"},
			{Namespace: "default", Name: "pending-0", Node: "node-1"},
			{Namespace: "default", Name: "ingress-1", Node: "node-2", IP: addr("10.0.2.2")},
		},
		PodsComplete: true,
		Services: []Service{
			{Namespace: "default", Name: "kubernetes", ClusterIP: addr("10.1.0.1")},
			{Namespace: "kube-system", Name: "kube-dns", ClusterIP: addr("10.1.0.10")},
		},
		Subnets: []Subnet{
			{Name: "zone-a", CIDR: pfx("172.20.1.0/24"), Gateway: addr("172.20.1.1")},
			{Name: "zone-b", CIDR: pfx("172.20.2.0/24"), Gateway: addr("172.20.2.1")},
			{Name: "zone-c", CIDR: pfx("172.20.3.0/24"), Gateway: addr("172.20.3.1")},
		},
		ServiceCIDR: pfx("10.1.0.0/16"), LoadBalancerCIDR: pfx("203.0.113.0/24"), ExternalCIDR: pfx("198.51.100.0/24"),
	}
}

var tunToNode5 = podnet.TunnelName(addr("172.20.3.10"))

func fixtureKernel() *KernelState {
	gw := addr("172.20.1.1")
	agent, cni := kernel.RouteProtocolAgent, kernel.RouteProtocolCNI
	return &KernelState{
		Links: []kernel.Link{
			{Index: 1, Name: "lo", Type: "device", Up: true, Addrs: []netip.Prefix{pfx("127.0.0.1/8")}},
			{Index: 2, Name: "eth0", Type: "veth", Up: true, MTU: 1500, Addrs: []netip.Prefix{pfx("172.20.1.10/24")}, Alias: "kdive-lab:t uplink of node-1"},
			{Index: 3, Name: "tunl0", Type: "ipip", Up: true, MTU: 1480, Addrs: []netip.Prefix{pfx("10.0.1.0/32")}, Alias: podnet.LinkAlias},
			{Index: 4, Name: "vxlan.kdive", Type: "vxlan", Up: true, MTU: 1450, Addrs: []netip.Prefix{pfx("10.0.1.0/32")}, Alias: podnet.LinkAlias},
			{Index: 5, Name: tunToNode5, Type: "ipip", Up: true, MTU: 1480, Alias: podnet.LinkAlias},
			{Index: 6, Name: "cali1111111111a", Type: "veth", Up: true, MTU: 1450, Alias: "kdive-cni:c1/eth0"},
			{Index: 7, Name: "cali2222222222b", Type: "veth", Up: true, MTU: 1450},
			{Index: 8, Name: "docker0", Type: "bridge", Up: true, Addrs: []netip.Prefix{pfx("172.17.0.1/16")}},
			{Index: 9, Name: IPVSDevice, Type: "dummy", Addrs: []netip.Prefix{pfx("10.1.0.1/32"), pfx("10.1.0.10/32")}},
			{Index: 10, Name: "ipip0", Type: "ipip", Up: true},
		},
		Tunnels: []kernel.Tunnel{
			{Name: "tunl0", Kind: kernel.TunnelIPIP, Alias: podnet.LinkAlias},
			{Name: "vxlan.kdive", Kind: kernel.TunnelVXLAN, Local: addr("172.20.1.10"), VNI: podnet.VXLANVNI, Port: podnet.VXLANPort, Alias: podnet.LinkAlias},
			{Name: tunToNode5, Kind: kernel.TunnelIPIP, Local: addr("172.20.1.10"), Remote: addr("172.20.3.10"), Alias: podnet.LinkAlias},
			{Name: "ipip0", Kind: kernel.TunnelIPIP, Remote: addr("192.0.2.7")},
		},
		FDB: map[string][]kernel.FDBEntry{
			"vxlan.kdive": {{Dev: "vxlan.kdive", MAC: podnet.VTEPMAC(addr("172.20.2.11")), Dst: addr("172.20.2.11")}},
		},
		Routes: []kernel.Route{
			{Dst: pfx("10.0.1.0/24"), Blackhole: true, Protocol: agent, Metric: podnet.BlackholeMetric},
			{Dst: pfx("10.0.1.2/32"), Dev: "cali1111111111a", Scope: unix.RT_SCOPE_LINK, Protocol: cni},
			{Dst: pfx("10.0.1.3/32"), Dev: "cali2222222222b", Scope: unix.RT_SCOPE_LINK, Protocol: cni},
			{Dst: pfx("10.0.1.7/32"), Dev: "cali7777777777c", Scope: unix.RT_SCOPE_LINK, Protocol: cni},
			{Dst: pfx("10.0.2.0/24"), Gateway: addr("172.20.1.11"), Dev: "eth0", Protocol: agent},
			{Dst: pfx("10.0.3.0/24"), Gateway: addr("172.20.2.10"), Dev: "tunl0", OnLink: true, Protocol: agent},
			{Dst: pfx("10.0.4.0/24"), Gateway: addr("10.0.4.0"), Dev: "vxlan.kdive", OnLink: true, Protocol: agent},
			{Dst: pfx("10.0.5.0/24"), Gateway: addr("172.20.3.10"), Dev: tunToNode5, OnLink: true, Protocol: agent},
			{Dst: pfx("10.0.9.0/24"), Gateway: addr("172.20.1.12"), Dev: "eth0", Protocol: agent},
			{Dst: pfx("169.254.1.1/32"), Dev: "lo", Scope: unix.RT_SCOPE_LINK, Protocol: agent},
			{Dst: pfx("172.20.1.0/24"), Dev: "eth0", Scope: unix.RT_SCOPE_LINK, Src: addr("172.20.1.10"), Protocol: 2},
			{Dst: pfx("172.20.2.0/24"), Gateway: gw, Dev: "eth0", Protocol: 3},
			{Dst: pfx("198.51.100.0/24"), Gateway: gw, Dev: "eth0", Protocol: 3},
			{Dst: pfx("10.1.0.0/16"), Gateway: gw, Dev: "eth0", Protocol: 3},
			{Dst: pfx("203.0.113.0/24"), Gateway: gw, Dev: "eth0", Protocol: 3},
			{Dst: pfx("192.168.50.0/24"), Gateway: gw, Dev: "eth0", Protocol: 4},
			{Dst: pfx("172.17.0.0/16"), Dev: "docker0", Scope: unix.RT_SCOPE_LINK, Protocol: 2},
			{Gateway: gw, Dev: "eth0", Protocol: 16},
		},
	}
}

func TestAnnotateRoutes(t *testing.T) {
	yes, no := true, false
	want := map[string]struct {
		kind, owner, node, pod, encap string
		cross                         *bool
		meaning                       string
	}{
		"10.0.1.0/24":     {RouteOwnBlock, OwnerAgent, "node-1", "", "", nil, "blackhole: this node's own block 10.0.1.0/24"},
		"10.0.1.2/32":     {RoutePod, OwnerCNI, "node-1", "kube-system/coredns-0", "", nil, "pod kube-system/coredns-0 via cali1111111111a"},
		"10.0.1.3/32":     {RoutePod, OwnerCNI, "node-1", "default/web-1", "", nil, "pod default/web-1 via cali2222222222b"},
		"10.0.1.7/32":     {RoutePod, OwnerCNI, "", "", "", nil, "pod address 10.0.1.7 via cali7777777777c (no known pod holds it)"},
		"10.0.2.0/24":     {RoutePeerBlock, OwnerAgent, "node-2", "", "none", &no, "pod block 10.0.2.0/24 of node-2 via 172.20.1.11 (direct, same subnet)"},
		"10.0.3.0/24":     {RoutePeerBlock, OwnerAgent, "node-3", "", "ipip", &yes, "pod block 10.0.3.0/24 of node-3 via tunl0 (IPIP to 172.20.2.10, cross-subnet)"},
		"10.0.4.0/24":     {RoutePeerBlock, OwnerAgent, "node-4", "", "vxlan", &yes, "pod block 10.0.4.0/24 of node-4 via vxlan.kdive (VXLAN to 172.20.2.11, cross-subnet)"},
		"10.0.5.0/24":     {RoutePeerBlock, OwnerAgent, "node-5", "", "ipip", &yes, "pod block 10.0.5.0/24 of node-5 via " + tunToNode5 + " (IPIP tunnel to 172.20.3.10, cross-subnet)"},
		"10.0.9.0/24":     {RoutePeerBlock, OwnerAgent, "", "", "none", nil, "pod block 10.0.9.0/24 of no known node (stale"},
		"169.254.1.1/32":  {RoutePodGateway, OwnerAgent, "", "", "", nil, "routed pods' gateway 169.254.1.1"},
		"172.20.1.0/24":   {RouteNodeSubnet, OwnerKernel, "", "", "", nil, "node subnet zone-a 172.20.1.0/24, connected on eth0"},
		"172.20.2.0/24":   {RouteUnderlay, OwnerLab, "", "", "", nil, "node subnet zone-b 172.20.2.0/24 via gateway 172.20.1.1 (lab underlay"},
		"198.51.100.0/24": {RouteUnderlay, OwnerLab, "", "", "", nil, "external client's network 198.51.100.0/24"},
		"10.1.0.0/16":     {RouteService, OwnerLab, "", "", "", nil, "service CIDR 10.1.0.0/16 via gateway 172.20.1.1"},
		"203.0.113.0/24":  {RouteLBPool, OwnerLab, "", "", "", nil, "LoadBalancer pool 203.0.113.0/24 via gateway 172.20.1.1"},
		"192.168.50.0/24": {RouteForeign, OwnerForeign, "", "", "", nil, "foreign: route to 192.168.50.0/24 via gateway 172.20.1.1, not kdive's (proto static)"},
		"172.17.0.0/16":   {RouteForeign, OwnerForeign, "", "", "", nil, "foreign: connected network of docker0"},
		"default":         {RouteForeign, OwnerForeign, "", "", "", nil, "foreign: default route via gateway 172.20.1.1, not kdive's (proto dhcp)"},
	}
	rows := AnnotateRoutes(fixtureTopology(), fixtureKernel())
	if len(rows) != len(want) {
		t.Errorf("got %d rows, want %d", len(rows), len(want))
	}
	for _, r := range rows {
		w, ok := want[r.Dst]
		if !ok {
			t.Errorf("unexpected row %+v", r)
			continue
		}
		if r.Kind != w.kind || r.Owner != w.owner || r.Node != w.node || r.Pod != w.pod || r.Encap != w.encap {
			t.Errorf("%s: kind %q owner %q node %q pod %q encap %q; want %q %q %q %q %q", r.Dst, r.Kind, r.Owner, r.Node, r.Pod, r.Encap, w.kind, w.owner, w.node, w.pod, w.encap)
		}
		if (r.CrossSubnet == nil) != (w.cross == nil) || (r.CrossSubnet != nil && *r.CrossSubnet != *w.cross) {
			t.Errorf("%s: crossSubnet %v, want %v", r.Dst, r.CrossSubnet, w.cross)
		}
		if !strings.HasPrefix(r.Meaning, w.meaning) {
			t.Errorf("%s: meaning %q, want it to start with %q", r.Dst, r.Meaning, w.meaning)
		}
	}
	// The route text is `ip route`'s.
	for _, r := range rows {
		switch r.Dst {
		case "10.0.1.0/24":
			if r.Route != "blackhole 10.0.1.0/24 metric 1024" || r.Protocol != "kdive-agent" {
				t.Errorf("blackhole printed %q proto %q", r.Route, r.Protocol)
			}
		case "10.0.4.0/24":
			if r.Route != "10.0.4.0/24 via 10.0.4.0 dev vxlan.kdive onlink" {
				t.Errorf("vxlan route printed %q", r.Route)
			}
		case "10.0.1.2/32":
			if r.Route != "10.0.1.2 dev cali1111111111a scope link" || r.Protocol != "kdive-cni" {
				t.Errorf("pod route printed %q proto %q", r.Route, r.Protocol)
			}
		}
	}
}

func TestAnnotateRoutesVXLANWithoutFDB(t *testing.T) {
	ks := fixtureKernel()
	ks.FDB = nil
	for _, r := range AnnotateRoutes(fixtureTopology(), ks) {
		if r.Dst == "10.0.4.0/24" && !strings.Contains(r.Meaning, "no FDB entry for node-4's VTEP") {
			t.Errorf("VXLAN route without FDB entry: %q", r.Meaning)
		}
	}
}

func TestAnnotateLinks(t *testing.T) {
	want := map[string]struct {
		role, pod string
		peers     []string // node names, or IPs for unknown peers
		meaning   string
	}{
		"lo":              {LinkLoopback, "", nil, "loopback"},
		"eth0":            {LinkUplink, "", nil, "uplink: holds node IP 172.20.1.10 (node-1)"},
		"tunl0":           {LinkTunnel, "", []string{"node-3"}, "IPIP fallback device"},
		"vxlan.kdive":     {LinkVXLAN, "", []string{"node-4"}, "VXLAN VNI 4096 port 4789, local 172.20.1.10: pod traffic to node-4 (172.20.2.11)"},
		tunToNode5:        {LinkTunnel, "", []string{"node-5"}, "IPIP tunnel to node-5 (172.20.3.10)"},
		"cali1111111111a": {LinkPodVeth, "kube-system/coredns-0", nil, "host side of pod kube-system/coredns-0's veth (10.0.1.2)"},
		"cali2222222222b": {LinkPodVeth, "default/web-1", nil, "host side of pod default/web-1's veth (10.0.1.3)"},
		"docker0":         {LinkForeign, "", nil, "foreign: bridge link"},
		IPVSDevice:        {LinkIPVS, "", nil, "IPVS mode: holds 2 service IP(s), so the node accepts packets for them: 10.1.0.1 default/kubernetes; 10.1.0.10 kube-system/kube-dns"},
		"ipip0":           {LinkForeign, "", nil, "foreign: an IPIP device"},
	}
	rows := AnnotateLinks(fixtureTopology(), fixtureKernel())
	if len(rows) != len(want) {
		t.Errorf("got %d rows, want %d", len(rows), len(want))
	}
	for _, r := range rows {
		w, ok := want[r.Name]
		if !ok {
			t.Errorf("unexpected row %+v", r)
			continue
		}
		var peers []string
		for _, p := range r.Peers {
			peers = append(peers, p.Node)
		}
		if r.Role != w.role || r.Pod != w.pod || !slices.Equal(peers, w.peers) {
			t.Errorf("%s: role %q pod %q peers %v; want %q %q %v", r.Name, r.Role, r.Pod, peers, w.role, w.pod, w.peers)
		}
		if !strings.HasPrefix(r.Meaning, w.meaning) {
			t.Errorf("%s: meaning %q, want it to start with %q", r.Name, r.Meaning, w.meaning)
		}
	}
	for _, r := range rows {
		switch r.Name {
		case "vxlan.kdive":
			if r.Peers[0].MAC != "0a:6b:ac:14:02:0b" || r.Peers[0].IP != "172.20.2.11" {
				t.Errorf("VXLAN peer %+v", r.Peers[0])
			}
		case "cali1111111111a":
			if r.Attachment != "c1/eth0" {
				t.Errorf("veth attachment %q", r.Attachment)
			}
		case IPVSDevice:
			if !slices.Equal(r.ServiceIPs, []string{"10.1.0.1", "10.1.0.10"}) {
				t.Errorf("kube-ipvs0 service IPs %v", r.ServiceIPs)
			}
		}
	}
}

func TestAnnotatePods(t *testing.T) {
	rows := AnnotatePods(fixtureTopology(), fixtureKernel())
	type row struct{ name, ip, hostIf, netns, container, route, problems string }
	var got []row
	for _, r := range rows {
		got = append(got, row{podLabel(r), r.IP, r.HostInterface, r.NetNS, r.ContainerID, r.Route, strings.Join(r.Problems, "; ")})
	}
	want := []row{
		{"kube-system/coredns-0", "10.0.1.2", "cali1111111111a", "/run/netns/p1", "c1", "10.0.1.2 dev cali1111111111a scope link", ""},
		{"default/web-1", "10.0.1.3", "cali2222222222b", "/run/netns/p2", "c2", "10.0.1.3 dev cali2222222222b scope link", ""},
		{"-", "10.0.1.9", "", "", "c9", "blackhole 10.0.1.0/24 metric 1024",
			"no pod holds this address (leaked allocation?); no host veth; no /32 route on the node; the node's route for it is the blackhole"},
		{"default/pending-0", "", "", "", "", "", "not attached: no IP yet"},
	}
	if !slices.Equal(got, want) {
		t.Errorf("pods:\n got %+v\nwant %+v", got, want)
	}
}

func TestAnnotateBlocks(t *testing.T) {
	rows := AnnotateBlocks(fixtureTopology(), fixtureKernel())
	type row struct {
		block, node string
		inUse       int // -1: unknown
		local       bool
		route       string
		problems    string
	}
	var got []row
	for _, r := range rows {
		n := -1
		if r.InUse != nil {
			n = *r.InUse
		}
		if r.Capacity != 253 {
			t.Errorf("%s: capacity %d, want 253", r.Block, r.Capacity)
		}
		got = append(got, row{r.Block, r.Node, n, r.Local, r.Route, strings.Join(r.Problems, "; ")})
	}
	want := []row{
		{"10.0.1.0/24", "node-1", 3, true, "blackhole 10.0.1.0/24 metric 1024", "3 address(es) allocated but 2 pod(s) hold one"},
		{"10.0.2.0/24", "node-2", 1, false, "10.0.2.0/24 via 172.20.1.11 dev eth0", ""},
		{"10.0.3.0/24", "node-3", -1, false, "10.0.3.0/24 via 172.20.2.10 dev tunl0 onlink", ""},
		{"10.0.4.0/24", "node-4", -1, false, "10.0.4.0/24 via 10.0.4.0 dev vxlan.kdive onlink", ""},
		{"10.0.5.0/24", "node-5", -1, false, "10.0.5.0/24 via 172.20.3.10 dev " + tunToNode5 + " onlink", ""},
		{"10.0.9.0/24", "", -1, false, "10.0.9.0/24 via 172.20.1.12 dev eth0", ""},
	}
	if !slices.Equal(got, want) {
		t.Errorf("blocks:\n got %+v\nwant %+v", got, want)
	}
}

// Bridge mode (kube-router style): the block is on kube-bridge, whose
// connected route wins over the blackhole; pods are the bridge's ports.
func TestAnnotateBridgeMode(t *testing.T) {
	topo := fixtureTopology()
	topo.Network.Interface = model.InterfaceBridge
	topo.Nodes[0].IPAM.Allocations = topo.Nodes[0].IPAM.Allocations[:1]
	topo.Pods = topo.Pods[:1]
	ks := &KernelState{
		Links: []kernel.Link{
			{Index: 1, Name: "lo", Type: "device", Up: true},
			{Index: 2, Name: "eth0", Type: "veth", Up: true, Addrs: []netip.Prefix{pfx("172.20.1.10/24")}},
			{Index: 3, Name: "kube-bridge", Type: "bridge", Up: true, Addrs: []netip.Prefix{pfx("10.0.1.1/24")}, Alias: "kdive-cni: pod bridge",
				MAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}},
			{Index: 4, Name: "veth1a2b3c4d", Type: "veth", Up: true, Master: 3, Alias: "kdive-cni:c1/eth0"},
		},
		Routes: []kernel.Route{
			{Dst: pfx("10.0.1.0/24"), Dev: "kube-bridge", Scope: unix.RT_SCOPE_LINK, Src: addr("10.0.1.1"), Protocol: 2},
			{Dst: pfx("10.0.1.0/24"), Blackhole: true, Protocol: kernel.RouteProtocolAgent, Metric: podnet.BlackholeMetric},
		},
	}
	routes := AnnotateRoutes(topo, ks)
	if routes[0].Kind != RoutePodBridge || !strings.HasPrefix(routes[0].Meaning, "this node's pod block 10.0.1.0/24 on kube-bridge") {
		t.Errorf("bridge route: %+v", routes[0])
	}
	if routes[1].Kind != RouteOwnBlock || !strings.Contains(routes[1].Meaning, "kube-bridge's route wins") {
		t.Errorf("blackhole in bridge mode: %+v", routes[1])
	}
	links := AnnotateLinks(topo, ks)
	if br := links[2]; br.Role != LinkBridge || !slices.Equal(br.Ports, []string{"veth1a2b3c4d"}) || !strings.Contains(br.Meaning, "gateway 10.0.1.1/24, 1 pod port(s)") {
		t.Errorf("kube-bridge: %+v", br)
	}
	if v := links[3]; v.Role != LinkPodVeth || v.Pod != "kube-system/coredns-0" || v.Master != "kube-bridge" || !strings.HasSuffix(v.Meaning, ", port of kube-bridge") {
		t.Errorf("bridge port: %+v", v)
	}
	pods := AnnotatePods(topo, ks)
	if len(pods) != 1 || pods[0].HostInterface != "veth1a2b3c4d" || len(pods[0].Problems) != 0 || !strings.HasPrefix(pods[0].Route, "10.0.1.0/24 dev kube-bridge") {
		t.Errorf("bridge pod: %+v", pods)
	}
	blocks := AnnotateBlocks(topo, ks)
	if blocks[0].Route != "10.0.1.0/24 dev kube-bridge scope link src 10.0.1.1" {
		t.Errorf("own block's route in bridge mode: %q", blocks[0].Route)
	}
}
