package podnet_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/ktest"
	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/podnet"
)

// cluster is the address plan of render_test.go built from namespaces: a
// router holding one bridge per zone (192.0.2.1, 198.51.100.1) and three
// node namespaces whose eth0 is a veth to it. It has routes to the pod
// blocks, but like the lab's VPC router it forwards between zones only
// packets that carry no pod address, counting the ones it drops.
type cluster struct {
	router *kernel.NetNS
	nodes  []*testNode
}

type testNode struct {
	model.Node
	ns  *kernel.NetNS
	pod *kernel.NetNS // the node's one test pod, once attached
	rec *podnet.Reconciler
}

func (n *testNode) podIP() netip.Addr { return n.PodCIDR.Addr().Next().Next().Next().Next().Next() }

const vpcTable = "podnet_test"

func newCluster(t *testing.T) *cluster {
	t.Helper()
	ktest.RequireFeature(t, kernel.FeatureBridge)
	ktest.RequireFeature(t, kernel.FeatureNFTables)
	c := &cluster{router: ktest.NewNetNS(t)}
	must(t, c.router.Sysctl("net.ipv4.ip_forward", "1"))
	for _, k := range []string{"net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-arptables"} {
		if err := c.router.Sysctl(k, "0"); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
	}
	for br, gw := range map[string]string{"zone-a": "192.0.2.1/24", "zone-b": "198.51.100.1/24"} {
		must(t, c.router.AddBridge(br, kernel.LinkAttrs{}))
		must(t, c.router.AddAddr(br, netip.MustParsePrefix(gw)))
		must(t, c.router.LinkUp(br))
	}
	must(t, c.router.Nft(context.Background(), `table inet `+vpcTable+` {
	counter pods { }
	chain forward {
		type filter hook forward priority filter; policy accept;
		ip saddr 10.244.0.0/16 counter name "pods" drop
		ip daddr 10.244.0.0/16 counter name "pods" drop
	}
}
`))
	for _, m := range []model.Node{node1, node2, node3} {
		zone, gw, other := "zone-a", "192.0.2.1", "198.51.100.0/24"
		if m.Name == "node-3" {
			zone, gw, other = "zone-b", "198.51.100.1", "192.0.2.0/24"
		}
		n := &testNode{Node: m, ns: ktest.NewNetNS(t)}
		port := "p-" + m.Name
		must(t, c.router.AddVeth(port, kernel.LinkAttrs{}, n.ns, "eth0", kernel.LinkAttrs{}))
		must(t, c.router.SetMaster(port, zone))
		must(t, c.router.LinkUp(port))
		must(t, n.ns.AddAddr("eth0", netip.PrefixFrom(m.IP(), 24)))
		must(t, n.ns.LinkUp("eth0"))
		must(t, n.ns.ReplaceRoute(kernel.Route{Dst: netip.MustParsePrefix(other), Gateway: netip.MustParseAddr(gw), Dev: "eth0"}))
		// The router knows the pod blocks (as if it heard them over BGP),
		// so only its VPC check stops bare pod traffic.
		must(t, c.router.ReplaceRoute(kernel.Route{Dst: m.PodCIDR, Gateway: m.IP(), Dev: zone}))
		c.nodes = append(c.nodes, n)
	}
	return c
}

// peers is every node's model, as the agent would pass it.
func (c *cluster) peers() []model.Node {
	var out []model.Node
	for _, n := range c.nodes {
		out = append(out, n.Node)
	}
	return out
}

// sync runs every node's reconciler with nw (a new one when the network
// changed) and fails the test on error.
func (c *cluster) sync(t *testing.T, nw model.PodNetwork) {
	t.Helper()
	for _, n := range c.nodes {
		n.rec = podnet.New(podnet.Options{NetNS: n.ns, Network: nw, Uplink: "eth0"})
		must(t, n.rec.Sync(context.Background(), podnet.State{Local: n.Node, Peers: c.peers()}))
	}
}

// attachPods gives each node one pod the way the CNI plugin would, with
// the pod MTU on its veth: routed (a /32 route per pod, the host end of
// the veth as the gateway 169.254.1.1) or bridged (kube-bridge holding the
// block's first address).
func (c *cluster) attachPods(t *testing.T, nw model.PodNetwork) {
	t.Helper()
	for _, n := range c.nodes {
		n.pod = ktest.NewNetNS(t)
		mtu := nw.PodMTU(1500)
		must(t, n.ns.AddVeth("veth-pod", kernel.LinkAttrs{MTU: mtu}, n.pod, "eth0", kernel.LinkAttrs{MTU: mtu}))
		must(t, n.ns.LinkUp("veth-pod"))
		must(t, n.pod.LinkUp("eth0"))
		if nw.Interface == model.InterfaceBridge {
			gw := n.PodCIDR.Addr().Next()
			must(t, n.ns.AddBridge("kube-bridge", kernel.LinkAttrs{MTU: mtu}))
			must(t, n.ns.AddAddr("kube-bridge", netip.PrefixFrom(gw, n.PodCIDR.Bits())))
			must(t, n.ns.SetMaster("veth-pod", "kube-bridge"))
			must(t, n.ns.LinkUp("kube-bridge"))
			must(t, n.pod.AddAddr("eth0", netip.PrefixFrom(n.podIP(), n.PodCIDR.Bits())))
			must(t, n.pod.ReplaceRoute(kernel.Route{Gateway: gw, Dev: "eth0"}))
			continue
		}
		gw := netip.MustParseAddr("169.254.1.1")
		must(t, n.ns.AddAddr("veth-pod", netip.PrefixFrom(gw, 32)))
		must(t, n.ns.ReplaceRoute(kernel.Route{Dst: netip.PrefixFrom(n.podIP(), 32), Dev: "veth-pod",
			Scope: unix.RT_SCOPE_LINK, Protocol: kernel.RouteProtocolCNI}))
		must(t, n.pod.AddAddr("eth0", netip.PrefixFrom(n.podIP(), 32)))
		must(t, n.pod.ReplaceRoute(kernel.Route{Dst: netip.PrefixFrom(gw, 32), Dev: "eth0", Scope: unix.RT_SCOPE_LINK}))
		must(t, n.pod.ReplaceRoute(kernel.Route{Gateway: gw, Dev: "eth0"}))
	}
}

// vpcDrops is how many pod-addressed packets the router dropped.
func (c *cluster) vpcDrops(t *testing.T) int {
	t.Helper()
	out, err := c.router.Run(context.Background(), "", "nft", "list", "counter", "inet", vpcTable, "pods")
	must(t, err)
	var pkts, bytes int
	i := strings.Index(out, "packets")
	if _, err := fmt.Sscanf(out[i:], "packets %d bytes %d", &pkts, &bytes); err != nil {
		t.Fatalf("parse counter %q: %v", out, err)
	}
	return pkts
}

// kernelState reads back, one sorted line each, what podnet owns on a node:
// its tunnel devices, the plan's sysctls, the VXLAN FDB and permanent
// neighbours, and its routes, in the plan's notation.
func kernelState(t *testing.T, ns *kernel.NetNS, sysctls []podnet.SysctlEntry) string {
	t.Helper()
	var lines []string
	ts, err := ns.Tunnels()
	must(t, err)
	for _, tu := range ts {
		if tu.Alias != podnet.LinkAlias && tu.Name != podnet.VXLANDevice {
			continue
		}
		if !tu.Up {
			t.Errorf("tunnel %s is down", tu.Name)
		}
		lines = append(lines, "link "+tu.String())
		if tu.Kind != kernel.TunnelVXLAN {
			continue
		}
		fdb, err := ns.FDB(tu.Name)
		must(t, err)
		for _, e := range fdb {
			lines = append(lines, "fdb "+e.String())
		}
		nbs, err := ns.Neighbors(tu.Name)
		must(t, err)
		for _, e := range nbs {
			if e.Permanent {
				lines = append(lines, "neigh "+e.String())
			}
		}
	}
	for _, s := range sysctls {
		v, err := ns.ReadSysctl(s.Name)
		must(t, err)
		lines = append(lines, "sysctl "+s.Name+"="+v)
	}
	rs, err := ns.Routes()
	must(t, err)
	for _, r := range rs {
		if r.Protocol == kernel.RouteProtocolAgent {
			lines = append(lines, "route "+r.String())
		}
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// planState is what kernelState should read for a plan.
func planState(p *podnet.Plan) string {
	var lines []string
	for _, l := range p.Links {
		lines = append(lines, "link "+l.Tunnel.String())
	}
	for _, s := range p.Sysctls {
		lines = append(lines, "sysctl "+s.Name+"="+s.Value)
	}
	for _, f := range p.FDB {
		lines = append(lines, "fdb "+f.Entry.String())
	}
	for _, n := range p.Neighbors {
		lines = append(lines, "neigh "+n.Neighbor.String())
	}
	for _, r := range p.Routes {
		lines = append(lines, "route "+r.Route.String())
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
