package kernel_test

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/ktest"
)

// TestIPSets creates one set of each type the IPVS mode uses in a fresh
// namespace, fills them over netlink and reads them back, checking the
// kernel agrees with `ipset list` on what it holds.
func TestIPSets(t *testing.T) {
	n := ktest.NewNetNS(t)
	s, err := n.OpenIPSets()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ip := netip.MustParseAddr
	sets := []struct {
		spec    kernel.IPSetSpec
		entries []kernel.IPSetEntry
		want    []string
	}{
		{kernel.IPSetSpec{Name: "T-IP", Type: "hash:ip"},
			[]kernel.IPSetEntry{{IP: ip("10.1.0.2")}}, []string{"10.1.0.2"}},
		{kernel.IPSetSpec{Name: "T-IPPORT", Type: "hash:ip,port"},
			[]kernel.IPSetEntry{{IP: ip("10.1.0.2"), Proto: "tcp", Port: 80}, {IP: ip("10.1.0.10"), Proto: "udp", Port: 53}},
			[]string{"10.1.0.10,udp:53", "10.1.0.2,tcp:80"}},
		{kernel.IPSetSpec{Name: "T-IPPORTIP", Type: "hash:ip,port,ip"},
			[]kernel.IPSetEntry{{IP: ip("10.0.1.2"), Proto: "tcp", Port: 8080, IP2: ip("10.0.1.2")}},
			[]string{"10.0.1.2,tcp:8080,10.0.1.2"}},
		{kernel.IPSetSpec{Name: "T-IPPORTNET", Type: "hash:ip,port,net"},
			[]kernel.IPSetEntry{{IP: ip("203.0.113.20"), Proto: "tcp", Port: 80, Net2: netip.MustParsePrefix("198.51.100.0/24")}},
			[]string{"203.0.113.20,tcp:80,198.51.100.0/24"}},
		{kernel.IPSetSpec{Name: "T-PORTS", Type: "bitmap:port", PortTo: 65535},
			[]kernel.IPSetEntry{{Port: 30080}, {Port: 32000}}, []string{"30080", "32000"}},
		{kernel.IPSetSpec{Name: "T-MARKS", Type: "hash:ip,port", SkbInfo: true},
			[]kernel.IPSetEntry{{IP: ip("172.20.1.10"), Proto: "tcp", Port: 30083, SkbMark: 0x10010000}},
			[]string{"172.20.1.10,tcp:30083 skbmark 0x10010000"}},
	}
	for _, c := range sets {
		if err := s.Create(c.spec); err != nil {
			t.Fatal(err)
		}
		if err := s.Create(c.spec); err != nil {
			t.Errorf("creating %s again with the same type: %v", c.spec.Name, err)
		}
		for _, e := range c.entries {
			if err := s.Add(c.spec.Name, e, false); err != nil {
				t.Fatal(err)
			}
		}
		got := listed(t, s, c.spec.Name)
		if !slices.Equal(got, c.want) {
			t.Errorf("%s holds %q, want %q", c.spec.Name, got, c.want)
		}
	}
	if err := s.Create(kernel.IPSetSpec{Name: "T-IP", Type: "hash:ip,port"}); err == nil {
		t.Errorf("creating T-IP again as another type succeeded")
	}

	// An element's skbmark changes in place with replace; without, adding
	// it again fails.
	e := kernel.IPSetEntry{IP: ip("172.20.1.10"), Proto: "tcp", Port: 30083, SkbMark: 0x10020000}
	if err := s.Add("T-MARKS", e, false); err == nil {
		t.Errorf("adding an existing element without replace succeeded")
	}
	if err := s.Add("T-MARKS", e, true); err != nil {
		t.Fatal(err)
	}
	if got := listed(t, s, "T-MARKS"); !slices.Equal(got, []string{"172.20.1.10,tcp:30083 skbmark 0x10020000"}) {
		t.Errorf("after replace T-MARKS holds %q", got)
	}
	out, err := n.Run(t.Context(), "", "ipset", "list", "T-MARKS")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "172.20.1.10,tcp:30083 skbmark 0x10020000") || !strings.Contains(out, "skbinfo") {
		t.Errorf("ipset list shows:\n%s", out)
	}

	if err := s.Del("T-IPPORT", kernel.IPSetEntry{IP: ip("10.1.0.2"), Proto: "tcp", Port: 80}); err != nil {
		t.Fatal(err)
	}
	if got := listed(t, s, "T-IPPORT"); !slices.Equal(got, []string{"10.1.0.10,udp:53"}) {
		t.Errorf("after delete T-IPPORT holds %q", got)
	}
	all, err := s.ListAll()
	if err != nil || len(all) != len(sets) {
		t.Errorf("ListAll: %d sets, %v; want %d", len(all), err, len(sets))
	}
	for _, c := range sets {
		if err := s.Destroy(c.spec.Name); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Destroy("T-IP"); err != nil {
		t.Errorf("destroying a missing set: %v", err)
	}
	if _, err := s.List("T-IP"); !errors.Is(err, kernel.ErrNotFound) {
		t.Errorf("listing a destroyed set: %v, want ErrNotFound", err)
	}
}

func listed(t *testing.T, s *kernel.IPSets, name string) []string {
	t.Helper()
	set, err := s.List(name)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range set.Entries {
		out = append(out, e.String())
	}
	slices.Sort(out)
	return out
}
