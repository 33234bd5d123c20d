package proxy_test

import (
	"testing"

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
