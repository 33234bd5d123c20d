package podnet_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/ktest"
	"github.com/kdive/kdive/internal/kernel/nft"
	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/podnet"
)

// TestTrafficNone: without encapsulation pods reach pods of the same
// subnet directly, and the router drops pod traffic between subnets, as a
// VPC does (that is why cross-subnet encapsulation exists).
func TestTrafficNone(t *testing.T) {
	c := newCluster(t)
	nw := network(routed, "none", cross)
	c.sync(t, nw)
	c.attachPods(t, nw)
	n1, n2, n3 := c.nodes[0], c.nodes[1], c.nodes[2]
	if err := tcpRoundTrip(n1.pod, n2.pod, n2.podIP(), 1024); err != nil {
		t.Errorf("pod on node-1 -> pod on node-2 (same subnet): %v", err)
	}
	if err := tcpRoundTrip(n1.ns, n2.pod, n2.podIP(), 1024); err != nil {
		t.Errorf("node-1 -> pod on node-2 (same subnet): %v", err)
	}
	before := c.vpcDrops(t)
	if err := tcpRoundTrip(n1.pod, n3.pod, n3.podIP(), 1024); err == nil {
		t.Errorf("pod on node-1 -> pod on node-3 (across subnets, unencapsulated) got through the VPC router")
	}
	if c.vpcDrops(t) == before {
		t.Errorf("the router counted no pod-addressed drop")
	}
}

func TestTrafficVXLAN(t *testing.T) {
	for _, pol := range []model.EncapPolicy{cross, always} {
		t.Run(string(pol), func(t *testing.T) {
			ktest.RequireFeature(t, kernel.FeatureVXLAN)
			checkPodTraffic(t, network(routed, "vxlan", pol))
		})
	}
}

// TestTrafficIPIP runs presets A, B and C's pod networks: Calico-style
// tunl0 (cross-subnet, always) and kube-router-style per-peer tunnels with
// bridged pods.
func TestTrafficIPIP(t *testing.T) {
	for _, nw := range []model.PodNetwork{network(routed, "ipip", cross), network(routed, "ipip", always), network(bridge, "ipip", cross)} {
		t.Run(string(nw.Interface)+"/"+string(nw.EncapPolicy), func(t *testing.T) {
			ktest.RequireFeature(t, kernel.FeatureIPIP)
			checkPodTraffic(t, nw)
		})
	}
}

// checkPodTraffic builds the cluster in mode nw and sends real traffic:
//
//   - TCP, 64 KiB each way, pod to pod in the same subnet and across
//     subnets, and node to remote pod (the node's tunnel address as source,
//     so the answer comes back through the tunnel, not unencapsulated
//     through the VPC router, which would drop it);
//   - a UDP datagram with DF set, as large as the pod MTU allows, from a pod
//     to a pod across subnets, and from node-1 itself at the tunnel's MTU:
//     both arrive; one byte more from the node fails locally with EMSGSIZE.
//     With no fragment made or reassembled on any node, this shows the
//     tunnel MTU is exactly what the underlay carries: not larger (it would
//     fragment or drop), not smaller (the datagram at pod MTU would fail);
//   - the router dropped nothing: pod addresses never crossed it bare;
//   - the blackhole for the node's own block catches unassigned addresses
//     in routed mode and yields to kube-bridge's connected route in bridge
//     mode.
func checkPodTraffic(t *testing.T, nw model.PodNetwork) {
	c := newCluster(t)
	c.sync(t, nw)
	c.attachPods(t, nw)
	n1, n2, n3 := c.nodes[0], c.nodes[1], c.nodes[2]
	frags := func() (n int64) {
		for _, node := range c.nodes {
			n += fragCounters(t, node.ns)
		}
		return n
	}
	fragsBefore := frags()

	for _, p := range []struct {
		what     string
		from, to *kernel.NetNS
		dst      netip.Addr
	}{
		{"pod on node-1 -> pod on node-2 (same subnet)", n1.pod, n2.pod, n2.podIP()},
		{"pod on node-1 -> pod on node-3 (across subnets)", n1.pod, n3.pod, n3.podIP()},
		{"node-1 -> pod on node-3", n1.ns, n3.pod, n3.podIP()},
		{"node-3 -> pod on node-2", n3.ns, n2.pod, n2.podIP()},
	} {
		if err := tcpRoundTrip(p.from, p.to, p.dst, 64<<10); err != nil {
			t.Errorf("%s: %v", p.what, err)
		}
	}

	mtu := nw.PodMTU(1500)
	if err := udpDF(n1.pod, n3.pod, n3.podIP(), mtu-28); err != nil {
		t.Errorf("DF datagram of %d bytes (pod MTU %d) from pod on node-1 to pod on node-3: %v", mtu-28, mtu, err)
	}
	if err := udpDF(n1.ns, n3.pod, n3.podIP(), mtu-28); err != nil {
		t.Errorf("DF datagram of %d bytes (tunnel MTU %d) from node-1 to pod on node-3: %v", mtu-28, mtu, err)
	}
	if err := udpDF(n1.ns, n3.pod, n3.podIP(), mtu-27); !errors.Is(err, unix.EMSGSIZE) {
		t.Errorf("DF datagram one byte over the tunnel MTU from node-1: err = %v, want EMSGSIZE", err)
	}
	if d := frags() - fragsBefore; d != 0 {
		t.Errorf("nodes made or reassembled %d fragments: an MTU is wrong", d)
	}
	if d := c.vpcDrops(t); d != 0 {
		t.Errorf("the router dropped %d pod-addressed packets: something was not encapsulated", d)
	}

	// The route each destination takes from node-1.
	tunnel := podnet.VXLANDevice
	if nw.Encap == model.EncapIPIP {
		tunnel = kernel.IPIPFallback
		if nw.Interface == model.InterfaceBridge {
			tunnel = podnet.TunnelName(n3.IP())
		}
	}
	same := "eth0"
	if nw.EncapPolicy == model.EncapAlways {
		same = tunnel
		if nw.Interface == model.InterfaceBridge {
			same = podnet.TunnelName(n2.IP())
		}
	}
	for dst, dev := range map[netip.Addr]string{n2.podIP(): same, n3.podIP(): tunnel} {
		if r, err := n1.ns.RouteGet(dst); err != nil || r.Dev != dev {
			t.Errorf("node-1 routes %s via %q (%v), want %s", dst, r.Dev, err, dev)
		}
	}
	if nw.Encap == model.EncapIPIP && nw.Interface == model.InterfaceBridge {
		// Per-peer tunnels receive by exact local/remote match: the
		// fallback device was never needed.
		for _, n := range c.nodes {
			if l, err := n.ns.LinkByName(kernel.IPIPFallback); err != nil || l.Up {
				t.Errorf("%s: tunl0 = %+v (%v), want it present and down", n.Name, l, err)
			}
		}
	}
	unassigned := netip.MustParseAddr("10.244.1.99")
	r, err := n1.ns.RouteGet(unassigned)
	switch {
	case nw.Interface == model.InterfaceBridge && (err != nil || r.Dev != "kube-bridge"):
		t.Errorf("bridge mode: node-1 routes %s via %q (%v), want kube-bridge's connected route over the blackhole", unassigned, r.Dev, err)
	case nw.Interface == model.InterfaceRouted && err == nil:
		t.Errorf("routed mode: node-1 routes unassigned %s via %q, want the blackhole", unassigned, r.Dev)
	}
}

// TestTrafficNATOutgoing: with natOutgoing a pod reaches an address outside
// every pod block (node-3's own address, across the VPC router, which
// drops pod-addressed packets) as its node; traffic between pods is not
// masqueraded; without it the router drops the pod's packets. Turning it
// off and Cleanup remove the table.
func TestTrafficNATOutgoing(t *testing.T) {
	ktest.RequireFeature(t, kernel.FeatureVXLAN)
	c := newCluster(t)
	nw := network(routed, "vxlan", cross)
	c.sync(t, nw)
	c.attachPods(t, nw)
	n1, n3 := c.nodes[0], c.nodes[2]
	before := c.vpcDrops(t)
	if err := tcpRoundTrip(n1.pod, n3.ns, n3.IP(), 1024); err == nil {
		t.Errorf("without natOutgoing, pod on node-1 -> node-3's address got through the VPC router")
	}
	if c.vpcDrops(t) == before {
		t.Errorf("the router counted no drop of the pod's packet")
	}
	ctx := context.Background()
	sync := func(on bool) {
		for _, n := range c.nodes {
			n.rec = podnet.New(podnet.Options{NetNS: n.ns, Network: nw, Uplink: "eth0", NATOutgoing: on})
			must(t, n.rec.Sync(ctx, podnet.State{Local: n.Node, Peers: c.peers()}))
		}
	}
	sync(true)
	out, err := n1.ns.Run(ctx, "", "nft", "list", "table", "ip", podnet.NATTable)
	must(t, err)
	for _, want := range []string{"elements = { 10.244.1.0-10.244.3.255 }", "ip saddr 10.244.1.0/24 ip daddr != @pod-blocks masquerade"} {
		if !strings.Contains(out, want) {
			t.Errorf("table %s lacks %q:\n%s", podnet.NATTable, want, out)
		}
	}
	if err := tcpRoundTrip(n1.pod, n3.ns, n3.IP(), 1024); err != nil {
		t.Errorf("with natOutgoing, pod on node-1 -> node-3's address: %v", err)
	}
	// Between pods the source stays: node-3's pod sees node-1's pod; to
	// node-3's address the pod arrives as node-1.
	if got := peerSource(t, n1.pod, n3.pod, n3.podIP()); got != n1.podIP() {
		t.Errorf("pod on node-3 saw pod on node-1 come from %s, want %s (not masqueraded)", got, n1.podIP())
	}
	if got := peerSource(t, n1.pod, n3.ns, n3.IP()); got != n1.IP() {
		t.Errorf("node-3 saw pod on node-1 come from %s, want node-1's %s (masqueraded)", got, n1.IP())
	}
	sync(false)
	if has, err := nft.HasTable(n1.ns, nft.Table{Family: nft.IPv4, Name: podnet.NATTable}); err != nil || has {
		t.Errorf("natOutgoing off: table still there (%v, %v)", has, err)
	}
	sync(true)
	must(t, n1.rec.Cleanup(ctx))
	if has, err := nft.HasTable(n1.ns, nft.Table{Family: nft.IPv4, Name: podnet.NATTable}); err != nil || has {
		t.Errorf("after Cleanup: table still there (%v, %v)", has, err)
	}
}

// peerSource is the source address a TCP connection from "from" to dst
// arrives with in "to".
func peerSource(t *testing.T, from, to *kernel.NetNS, dst netip.Addr) netip.Addr {
	t.Helper()
	var ln net.Listener
	must(t, to.Do(func() (err error) {
		ln, err = net.Listen("tcp4", netip.AddrPortFrom(dst, 0).String())
		return err
	}))
	defer ln.Close()
	got := make(chan netip.Addr, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- netip.Addr{}
			return
		}
		got <- c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
		c.Close()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := from.DialContext(ctx, "tcp4", ln.Addr().String())
	if err != nil {
		t.Errorf("connect to %s: %v", ln.Addr(), err)
		return netip.Addr{}
	}
	c.Close()
	return <-got
}
