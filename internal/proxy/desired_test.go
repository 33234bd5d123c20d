package proxy_test

import (
	"github.com/kdive/kdive/internal/model"
	"net/netip"
	"slices"
	"testing"

	"github.com/kdive/kdive/internal/proxy"
	"github.com/kdive/kdive/internal/proxy/proxytest"
)

// TestFixtureResolves checks the endpoint choices the case table relies on.
func TestFixtureResolves(t *testing.T) {
	want := map[string][2]int{ // cluster, local endpoint counts
		"default/web:http": {3, 0}, "default/local": {2, 1}, "default/local-none": {1, 0},
		"default/itp-local": {0, 0}, "default/terminating": {1, 0}, "default/prefer-close": {1, 0},
		"default/empty": {0, 0},
	}
	for _, p := range proxytest.Fixture().Services {
		w, ok := want[p.Name.String()]
		if !ok {
			continue
		}
		if len(p.Cluster) != w[0] || len(p.Local) != w[1] {
			t.Errorf("%s: cluster %v local %v, want %d and %d", p.Name, p.Cluster, p.Local, w[0], w[1])
		}
		if p.Name.Name == "empty" && p.HasEndpoints {
			t.Errorf("%s has endpoints", p.Name)
		}
		if p.Name.Name == "itp-local" && !p.HasEndpoints {
			t.Errorf("%s: has endpoints elsewhere, so its traffic is dropped, not rejected", p.Name)
		}
	}
}

func TestHealthCheckIPs(t *testing.T) {
	addrs := func(ss ...string) []netip.Addr {
		var out []netip.Addr
		for _, s := range ss {
			out = append(out, netip.MustParseAddr(s))
		}
		return out
	}
	prefixes := func(ss ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, s := range ss {
			out = append(out, netip.MustParsePrefix(s))
		}
		return out
	}
	node := model.Node{Name: "n1", IPs: addrs("192.0.2.10", "198.51.100.10")}
	for _, c := range []struct {
		name string
		cfg  proxy.Config
		want []netip.Addr
	}{
		{"unset: every address", proxy.Config{}, addrs("0.0.0.0")},
		{"unset with localhost NodePorts: still every address", proxy.Config{LocalhostNodePorts: true}, addrs("0.0.0.0")},
		{"matching node IPs only", proxy.Config{NodePortAddresses: prefixes("192.0.2.0/24")}, addrs("192.0.2.10")},
		{"no 127.0.0.1 for localhost NodePorts", proxy.Config{NodePortAddresses: prefixes("192.0.2.0/24"), LocalhostNodePorts: true}, addrs("192.0.2.10")},
		{"both", proxy.Config{NodePortAddresses: prefixes("198.51.100.0/24", "192.0.2.10/32")}, addrs("192.0.2.10", "198.51.100.10")},
		{"none matching: nowhere", proxy.Config{NodePortAddresses: prefixes("10.0.0.0/8")}, nil},
		{"0.0.0.0/0 matches all", proxy.Config{NodePortAddresses: prefixes("10.0.0.0/8", "0.0.0.0/0")}, addrs("0.0.0.0")},
	} {
		if got := proxy.HealthCheckIPs(c.cfg, node); !slices.Equal(got, c.want) {
			t.Errorf("%s: HealthCheckIPs = %v, want %v", c.name, got, c.want)
		}
	}
}
