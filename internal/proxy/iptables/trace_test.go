package iptables

import (
	"net/netip"
	"testing"

	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy"
	"github.com/kdive/kdive/internal/proxy/proxytest"
)

// TestTraceCases runs the shared packet-flow case table through the
// rendered rules.
func TestTraceCases(t *testing.T) {
	proxytest.Run(t, func(t *testing.T, d *proxy.Desired, p proxytest.Packet) proxytest.Result {
		return Trace(Render(d), p)
	})
}

// TestTraceConfig covers settings the case table leaves at their
// defaults.
func TestTraceConfig(t *testing.T) {
	webEPs := []string{"10.0.1.2:8080", "10.0.2.2:8080", "10.0.3.2:8080"}
	dnat := func(masq bool, eps ...string) proxytest.Result {
		r := proxytest.Result{Verdict: proxytest.DNAT, Endpoints: map[string]bool{}}
		for _, e := range eps {
			r.Endpoints[e] = masq
		}
		return r
	}
	pkt := func(src, dst string, port int, fromNode bool) proxytest.Packet {
		return proxytest.Packet{Src: netip.MustParseAddr(src), Proto: model.ProtocolTCP, Dst: netip.MustParseAddr(dst), Port: port, FromNode: fromNode}
	}
	node := proxytest.NodeIP.String()
	for _, c := range []struct {
		name   string
		config func(*proxy.Config)
		ranges []string // the LoadBalancer source ranges of default/local
		p      proxytest.Packet
		want   proxytest.Result
	}{
		{"localhost NodePort", func(c *proxy.Config) { c.LocalhostNodePorts = true }, nil,
			pkt("127.0.0.1", "127.0.0.1", 30080, true), dnat(true, webEPs...)},
		{"localnet guard drops outside traffic to 127.0.0.1", func(c *proxy.Config) { c.LocalhostNodePorts = true }, nil,
			pkt(proxytest.Stranger.String(), "127.0.0.1", 22, false), proxytest.Result{Verdict: proxytest.DROP}},
		{"no guard without localhost NodePorts", nil, nil,
			pkt(proxytest.Stranger.String(), "127.0.0.1", 22, false), proxytest.Result{Verdict: proxytest.ACCEPT}},
		{"masquerade all", func(c *proxy.Config) { c.MasqueradeAll = true }, nil,
			pkt(proxytest.LocalPod.String(), "10.1.0.2", 80, false), dnat(true, webEPs...)},
		{"NodePort address restricted away", func(c *proxy.Config) { c.NodePortAddresses = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")} }, nil,
			pkt(proxytest.ExternalIP.String(), node, 30080, false), proxytest.Result{Verdict: proxytest.ACCEPT}},
		{"node in the source range reaches its LoadBalancer IP", nil, []string{"172.20.0.0/16"},
			pkt(node, "203.0.113.20", 80, true), dnat(true, "10.0.1.4:8080", "10.0.3.4:8080")},
		{"node outside the source range is dropped", nil, nil,
			pkt(node, "203.0.113.20", 80, true), proxytest.Result{Verdict: proxytest.DROP}},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := proxytest.Fixture()
			if c.config != nil {
				c.config(&d.Config)
				d.NodePortIPs = proxy.NodePortIPs(d.Config, d.Node)
			}
			for i, q := range d.Services {
				if c.ranges != nil && q.Name.String() == "default/local" {
					sp := q.ServicePort
					sp.LoadBalancerSourceRanges = nil
					for _, r := range c.ranges {
						sp.LoadBalancerSourceRanges = append(sp.LoadBalancerSourceRanges, netip.MustParsePrefix(r))
					}
					d.Services[i] = proxy.Resolve(sp, d.Node)
				}
			}
			if got := Trace(Render(d), c.p); got.String() != c.want.String() {
				t.Errorf("%s:\n got %s\nwant %s", c.p, got, c.want)
			}
		})
	}
}
