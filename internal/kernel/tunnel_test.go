package kernel_test

import (
	"errors"
	"net"
	"net/netip"
	"testing"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/ktest"
)

func TestVXLANTunnelFDBNeighbors(t *testing.T) {
	ktest.RequireFeature(t, kernel.FeatureVXLAN)
	a, b := ktest.NewNetNS(t), ktest.NewNetNS(t)
	must(t, a.AddVeth("eth0", kernel.LinkAttrs{}, b, "eth0", kernel.LinkAttrs{}))
	must(t, a.AddAddr("eth0", netip.MustParsePrefix("192.0.2.1/24")))
	must(t, a.LinkUp("eth0"))
	mac, _ := net.ParseMAC("0a:6b:c0:00:02:01")
	want := kernel.Tunnel{
		Name: "vx.test", Kind: kernel.TunnelVXLAN, Local: netip.MustParseAddr("192.0.2.1"), VNI: 42, Port: 4789,
		Dev: "eth0", MAC: mac, MTU: 1450, Alias: "kdive-test", Addrs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/32")},
	}
	if changed, err := a.EnsureTunnel(want); err != nil || !changed {
		t.Fatalf("EnsureTunnel: changed %v, %v", changed, err)
	}
	if changed, err := a.EnsureTunnel(want); err != nil || changed {
		t.Errorf("EnsureTunnel again: changed %v, %v; want no change", changed, err)
	}
	ts, err := a.Tunnels()
	must(t, err)
	if len(ts) != 1 || ts[0].String() != want.String() || !ts[0].Up || ts[0].Alias != "kdive-test" {
		t.Errorf("Tunnels() = %+v\nwant %s, up", ts, want)
	}
	// Live changes in place, a VNI change by recreating.
	must(t, a.AddAddr("vx.test", netip.MustParsePrefix("10.9.9.9/32")))
	must(t, a.SetMTU("vx.test", 1400))
	want.VNI = 43
	if changed, err := a.EnsureTunnel(want); err != nil || !changed {
		t.Fatalf("EnsureTunnel with a new VNI: changed %v, %v", changed, err)
	}
	if ts, _ := a.Tunnels(); len(ts) != 1 || ts[0].String() != want.String() {
		t.Errorf("after the VNI change: %+v, want %s", ts, want)
	}
	// Device names with a dot take the slash form of sysctl names.
	must(t, a.Sysctl("net/ipv4/conf/vx.test/rp_filter", "2"))
	if v, err := a.ReadSysctl("net/ipv4/conf/vx.test/rp_filter"); err != nil || v != "2" {
		t.Errorf("rp_filter of vx.test = %q, %v", v, err)
	}

	peerMAC, _ := net.ParseMAC("0a:6b:c0:00:02:02")
	fdb := kernel.FDBEntry{Dev: "vx.test", MAC: peerMAC, Dst: netip.MustParseAddr("192.0.2.2")}
	nb := kernel.Neighbor{Dev: "vx.test", IP: netip.MustParseAddr("10.244.2.0"), MAC: peerMAC, Permanent: true}
	for range 2 {
		must(t, a.ReplaceFDB(fdb))
		must(t, a.ReplaceNeighbor(nb))
	}
	if got, err := a.FDB("vx.test"); err != nil || len(got) != 1 || got[0].String() != fdb.String() {
		t.Errorf("FDB = %v, %v; want [%s]", got, err, fdb)
	}
	if got, err := a.Neighbors("vx.test"); err != nil || len(got) != 1 || got[0].String() != nb.String() {
		t.Errorf("Neighbors = %v, %v; want [%s]", got, err, nb)
	}
	for range 2 {
		must(t, a.DeleteFDB(fdb))
		must(t, a.DeleteNeighbor(nb))
	}
	if got, err := a.FDB("vx.test"); err != nil || len(got) != 0 {
		t.Errorf("FDB after delete = %v, %v", got, err)
	}
	if got, err := a.Neighbors("vx.test"); err != nil || len(got) != 0 {
		t.Errorf("Neighbors after delete = %v, %v", got, err)
	}
	must(t, a.DeleteTunnel("vx.test"))
	must(t, a.DeleteTunnel("vx.test"))
	if _, err := a.LinkByName("vx.test"); !errors.Is(err, kernel.ErrNotFound) {
		t.Errorf("vx.test after DeleteTunnel: %v", err)
	}
}

func TestIPIPTunnels(t *testing.T) {
	ktest.RequireFeature(t, kernel.FeatureIPIP)
	a := ktest.NewNetNS(t)
	addr := []netip.Prefix{netip.MustParsePrefix("10.244.1.0/32")}
	fb := kernel.Tunnel{Name: kernel.IPIPFallback, Kind: kernel.TunnelIPIP, MTU: 1480, Alias: "kdive-test", Addrs: addr}
	p2p := kernel.Tunnel{Name: "tun-test", Kind: kernel.TunnelIPIP, Local: netip.MustParseAddr("192.0.2.1"),
		Remote: netip.MustParseAddr("198.51.100.2"), MTU: 1480, Alias: "kdive-test", Addrs: addr}
	for _, tu := range []kernel.Tunnel{fb, p2p} {
		if _, err := a.EnsureTunnel(tu); err != nil {
			t.Fatal(err)
		}
		if changed, err := a.EnsureTunnel(tu); err != nil || changed {
			t.Errorf("EnsureTunnel %s again: changed %v, %v", tu.Name, changed, err)
		}
	}
	ts, err := a.Tunnels()
	must(t, err)
	got := map[string]string{}
	for _, tu := range ts {
		got[tu.Name] = tu.String()
	}
	if got[fb.Name] != fb.String() || got[p2p.Name] != p2p.String() {
		t.Errorf("Tunnels() = %v, want %s and %s", got, fb, p2p)
	}
	// A new remote recreates the tunnel.
	p2p.Remote = netip.MustParseAddr("198.51.100.3")
	if changed, err := a.EnsureTunnel(p2p); err != nil || !changed {
		t.Errorf("EnsureTunnel with a new remote: changed %v, %v", changed, err)
	}
	// tunl0 cannot be deleted: DeleteTunnel releases it.
	must(t, a.DeleteTunnel(kernel.IPIPFallback))
	l, err := a.LinkByName(kernel.IPIPFallback)
	if err != nil || l.Up || len(l.Addrs) != 0 || l.Alias != "" {
		t.Errorf("tunl0 after DeleteTunnel = %+v, %v; want present, down, no address, no alias", l, err)
	}
	must(t, a.DeleteTunnel("tun-test"))
	if _, err := a.LinkByName("tun-test"); !errors.Is(err, kernel.ErrNotFound) {
		t.Errorf("tun-test after DeleteTunnel: %v", err)
	}
}
