package podnet_test

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/podnet"
)

// TestRenderSkipsPeers: peers that cannot be routed get no entries and a
// line saying why; the rest of the plan is unaffected.
func TestRenderSkipsPeers(t *testing.T) {
	st := renderState()
	st.Gateways = nil
	st.Peers = []model.Node{
		node2,
		node("node-0", "", "10.244.9.0/24"),
		node("node-4", "192.0.2.14", ""),
		node("node-5", "2001:db8::5", "10.244.5.0/24"),
		node("node-6", "192.0.2.11", "10.244.6.0/24"),
		node("node-7", "192.0.2.17", "10.244.1.128/25"),
		node("node-8", "192.0.2.12", "10.244.8.0/24"),
		node("node-9", "192.0.2.19", "10.244.2.0/23"),
		node3, // unencapsulated below, with no underlay gateway known
		node1, // this node, listed among the peers: ignored
	}
	p, err := podnet.Render(podnet.Options{Network: network(routed, "none", cross), Uplink: "eth0"}, st)
	if err != nil {
		t.Fatal(err)
	}
	want := `skip node-0  # no node IP yet
skip node-3  # no underlay route to node IP 198.51.100.13
skip node-4  # no pod block (spec.podCIDR) yet
skip node-5  # IPv6 (2001:db8::5, 10.244.5.0/24) is not supported
skip node-6  # has this node's IP 192.0.2.11
skip node-7  # pod block 10.244.1.128/25 overlaps this node's 10.244.1.0/24
skip node-8  # node IP 192.0.2.12 is also node-2's
skip node-9  # pod block 10.244.2.0/23 overlaps node-2's 10.244.2.0/24
`
	var got strings.Builder
	for _, line := range strings.SplitAfter(p.String(), "\n") {
		if strings.HasPrefix(line, "skip ") {
			got.WriteString(line)
		}
	}
	if got.String() != want {
		t.Errorf("skipped:\n%s\nwant:\n%s", got.String(), want)
	}
	if len(p.Routes) != 3 || p.Routes[2].Node != "node-2" {
		t.Errorf("routes = %v, want the blackhole, the pods' gateway and node-2's", p.Routes)
	}
	// With encapsulation node-3 needs no underlay gateway.
	p, err = podnet.Render(podnet.Options{Network: network(routed, "vxlan", cross), Uplink: "eth0"}, st)
	if err != nil {
		t.Fatal(err)
	}
	if got := p.Routes[len(p.Routes)-1]; got.Node != "node-3" {
		t.Errorf("last route %v, want node-3's through the tunnel", got)
	}
}

// TestRenderDeterministic: the plan does not depend on the order of peers;
// blocks are masked.
func TestRenderDeterministic(t *testing.T) {
	opts := podnet.Options{Network: network(bridge, "ipip", always), Uplink: "eth0"}
	st := renderState()
	a, err := podnet.Render(opts, st)
	if err != nil {
		t.Fatal(err)
	}
	slices.Reverse(st.Peers)
	st.Peers[0].PodCIDR = netip.MustParsePrefix("10.244.2.7/24")
	b, err := podnet.Render(opts, st)
	if err != nil {
		t.Fatal(err)
	}
	if a.String() != b.String() {
		t.Errorf("plans differ with the peers reordered:\n%s\n%s", a, b)
	}
}

func TestRenderErrors(t *testing.T) {
	good := podnet.Options{Network: network(routed, "vxlan", cross), Uplink: "eth0"}
	cases := []struct {
		name string
		edit func(*podnet.Options, *podnet.State)
		want string
	}{
		{"bad encap", func(o *podnet.Options, _ *podnet.State) { o.Network.Encap = "gre" }, `podNetwork.encap: unsupported value "gre"`},
		{"no uplink", func(o *podnet.Options, _ *podnet.State) { o.Uplink = "" }, "no uplink"},
		{"no node IP", func(_ *podnet.Options, s *podnet.State) { s.Local.IPs = nil }, "node-1: node IP invalid IP is not IPv4"},
		{"no block", func(_ *podnet.Options, s *podnet.State) { s.Local.PodCIDR = netip.Prefix{} }, "node-1: no IPv4 pod block"},
		{"foreign subnet", func(_ *podnet.Options, s *podnet.State) { s.Subnet = netip.MustParsePrefix("198.51.100.0/24") },
			"underlay subnet 198.51.100.0/24 does not contain node IP 192.0.2.11"},
		{"no mtu", func(_ *podnet.Options, s *podnet.State) { s.UplinkMTU = 0 }, "uplink eth0 mtu 0 is unknown or too small"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			o, s := good, renderState()
			c.edit(&o, &s)
			_, err := podnet.Render(o, s)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("err = %v, want it to contain %q", err, c.want)
			}
		})
	}
	// Encap none needs no MTU.
	s := renderState()
	s.UplinkMTU = 0
	if _, err := podnet.Render(podnet.Options{Network: network(routed, "none", cross), Uplink: "eth0"}, s); err != nil {
		t.Errorf("encap none without an uplink MTU: %v", err)
	}
}

func TestNames(t *testing.T) {
	a, b := podnet.TunnelName(node2.IP()), podnet.TunnelName(node3.IP())
	if a == b || len(a) != 14 || !strings.HasPrefix(a, "tun-") || a != podnet.TunnelName(netip.MustParseAddr("192.0.2.12")) {
		t.Errorf("tunnel names %q, %q: want distinct, stable, tun- and 10 hex digits", a, b)
	}
	if v6 := podnet.TunnelName(netip.MustParseAddr("2001:db8::1")); len(v6) > 15 {
		t.Errorf("tunnel name %q longer than IFNAMSIZ-1", v6)
	}
	mac := podnet.VTEPMAC(node3.IP())
	if mac.String() != "0a:6b:c6:33:64:0d" || mac[0]&1 != 0 || mac[0]&2 == 0 {
		t.Errorf("VTEP MAC %s: want 0a:6b:c6:33:64:0d, unicast, locally administered", mac)
	}
}
