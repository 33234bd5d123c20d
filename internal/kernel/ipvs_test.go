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

// TestIPVSTable programs virtual servers (address and firewall-mark
// ones) and real servers through kernel.IPVS and reads them back.
func TestIPVSTable(t *testing.T) {
	ktest.RequireFeature(t, kernel.FeatureIPVS)
	n := ktest.NewNetNS(t)
	h, err := n.OpenIPVS()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if !kernel.IPVSLoaded() {
		t.Errorf("IPVSLoaded is false with an IPVS handle open")
	}
	vs := kernel.VirtualServer{Address: netip.MustParseAddr("10.1.0.2"), Protocol: "TCP", Port: 80, Scheduler: "mh",
		Flags: kernel.IPVSFlagPersistent | kernel.IPVSFlagSched1 | kernel.IPVSFlagSched2, Timeout: 600}
	fwm := kernel.VirtualServer{FWMark: 0x10010000, Scheduler: "rr"}
	for _, v := range []kernel.VirtualServer{vs, fwm} {
		if err := h.AddVirtualServer(v); err != nil {
			t.Fatal(err)
		}
	}
	got, err := h.VirtualServers()
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(got, func(a, b kernel.VirtualServer) int { return strings.Compare(a.String(), b.String()) })
	if len(got) != 2 || got[0] != fwm || got[1] != vs {
		t.Errorf("virtual servers read back:\n %+v\nwant\n %+v", got, []kernel.VirtualServer{fwm, vs})
	}
	vs.Scheduler, vs.Flags, vs.Timeout = "wrr", 0, 0
	if err := h.UpdateVirtualServer(vs); err != nil {
		t.Fatal(err)
	}
	rs := kernel.RealServer{Address: netip.MustParseAddrPort("10.0.1.2:8080"), Weight: 1}
	if err := h.AddRealServer(vs, rs); err != nil {
		t.Fatal(err)
	}
	rs.Weight = 0
	if err := h.UpdateRealServer(vs, rs); err != nil {
		t.Fatal(err)
	}
	rss, err := h.RealServers(vs)
	if err != nil || len(rss) != 1 || rss[0] != rs {
		t.Errorf("real servers read back: %+v, %v; want [%+v]", rss, err, rs)
	}
	if got, _ := h.VirtualServers(); !slices.Contains(got, vs) {
		t.Errorf("updated virtual server not read back: %+v", got)
	}
	if err := h.DeleteRealServer(vs, rs); err != nil {
		t.Fatal(err)
	}
	if err := h.DeleteRealServer(vs, rs); err != nil {
		t.Errorf("deleting a missing real server: %v", err)
	}

	bad := kernel.VirtualServer{Address: netip.MustParseAddr("10.1.0.3"), Protocol: "TCP", Port: 80, Scheduler: "nosuch"}
	err = h.AddVirtualServer(bad)
	if !errors.Is(err, kernel.ErrSchedulerUnavailable) || !strings.Contains(err.Error(), "ip_vs_nosuch") {
		t.Errorf("a scheduler without a module: %v; want ErrSchedulerUnavailable naming ip_vs_nosuch", err)
	}

	if err := h.DeleteVirtualServer(vs); err != nil {
		t.Fatal(err)
	}
	if err := h.DeleteVirtualServer(vs); err != nil {
		t.Errorf("deleting a missing virtual server: %v", err)
	}
	if err := h.Flush(); err != nil {
		t.Fatal(err)
	}
	if got, err := h.VirtualServers(); err != nil || len(got) != 0 {
		t.Errorf("after flush: %+v, %v", got, err)
	}
}

// TestIPVSDummyDevice checks the kube-ipvs0-style dummy device: created
// once, left down, its addresses added and removed.
func TestIPVSDummyDevice(t *testing.T) {
	ktest.RequireFeature(t, kernel.FeatureDummy)
	n := ktest.NewNetNS(t)
	for i, want := range []bool{true, false} {
		created, err := n.EnsureDummy("kube-ipvs0", kernel.LinkAttrs{})
		if err != nil || created != want {
			t.Fatalf("EnsureDummy #%d: created %v, %v; want %v", i, created, err, want)
		}
	}
	p := netip.MustParsePrefix("10.1.0.2/32")
	if err := n.AddAddr("kube-ipvs0", p); err != nil {
		t.Fatal(err)
	}
	l, err := n.LinkByName("kube-ipvs0")
	if err != nil || l.Up || l.Type != "dummy" || !slices.Equal(l.Addrs, []netip.Prefix{p}) {
		t.Errorf("kube-ipvs0: %+v, %v; want a down dummy holding %s", l, err, p)
	}
	r, err := n.RouteGet(p.Addr())
	if err != nil || r.Dev != "lo" {
		t.Errorf("route to %s: %+v, %v; want it local (via lo) while the device is down", p.Addr(), r, err)
	}
	for range 2 {
		if err := n.DelAddr("kube-ipvs0", p); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := n.EnsureDummy("lo", kernel.LinkAttrs{}); err == nil {
		t.Errorf("EnsureDummy on lo succeeded")
	}
}
