package modes_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/kdive/kdive/internal/proxy/modes"
	"github.com/kdive/kdive/internal/proxy/nftables"
)

func TestRegistry(t *testing.T) {
	if got := modes.Names(); !slices.Equal(got, []string{"nftables", "iptables", "ipvs"}) {
		t.Errorf("Names() = %v, want nftables, iptables, ipvs in report order", got)
	}
	if _, err := modes.Get("ebpf"); err == nil || !strings.Contains(err.Error(), `"ebpf"`) || !strings.Contains(err.Error(), "nftables, iptables, ipvs") {
		t.Errorf("Get(ebpf) error %v; want one naming the mode and the choices", err)
	}
	// 10 services of 3 endpoints each, as `kdive bench sync` generates them.
	d := nftables.GenerateDesired(10, 3)
	for _, m := range modes.All() {
		got, err := modes.Get(m.Name)
		if err != nil || got.Name != m.Name {
			t.Fatalf("Get(%s) = %v, %v", m.Name, got.Name, err)
		}
		// New touches no kernel until a Sync.
		if be := m.New(modes.Options{}); be == nil || be.Mode() != m.Name {
			t.Errorf("%s: New built a backend of mode %v", m.Name, be)
		}
		if m.Inspect == nil {
			t.Errorf("%s: no Inspect", m.Name)
		}
		s := m.Size(d)
		if s.Rules < 10 {
			t.Errorf("%s: %+v for 10 services of 3 endpoints; want a rule per service at least", m.Name, s)
		}
		if m.Name == "ipvs" && (s.VirtualServers < 10 || s.RealServers < 30) {
			t.Errorf("ipvs: %+v; want a virtual server per service and a real server per endpoint", s)
		}
	}
}
