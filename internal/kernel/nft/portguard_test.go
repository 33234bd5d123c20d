package nft

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/kdive/kdive/internal/kernel/ktest"
)

// The guard's table as nft reads it back: the netlink expressions decode to
// the documented rules, elements round-trip, Allow is idempotent, Forget
// removes one port only, Delete everything. (The guard's effect on traffic
// is tested where the CNI plugin uses it: cni's spoof test.)
func TestPortGuardTable(t *testing.T) {
	ktest.RequireRoot(t)
	ns := ktest.NewNetNS(t)
	g := NewPortGuard(ns, "kdive-test-guard")
	mac := func(s string) net.HardwareAddr { m, _ := net.ParseMAC(s); return m }
	a := PortSource{Port: "kdvaaaaaaaaaaaa", MAC: mac("02:00:00:00:00:0a"), Addr: netip.MustParseAddr("192.0.2.10")}
	b := PortSource{Port: "kdvb", MAC: mac("02:00:00:00:00:0b"), Addr: netip.MustParseAddr("192.0.2.11")}
	if got, err := g.Sources(); err != nil || len(got) != 0 {
		t.Fatalf("sources without a table: %v, %v; want none, no error", got, err)
	}
	for range 2 {
		if err := g.Allow(a, b); err != nil {
			t.Fatal(err)
		}
	}
	out, err := ns.Run(context.Background(), "", "nft", "list", "table", "bridge", "kdive-test-guard")
	if err != nil {
		t.Fatalf("nft list: %v", err)
	}
	listing := string(out)
	for _, want := range []string{
		"type ifname . ether_addr . ipv4_addr",
		"type filter hook prerouting priority filter; policy accept;",
		`iifname . ether saddr . ip saddr @sources accept`,
		`iifname . ether saddr . arp saddr ip @sources iifname . arp saddr ether . arp saddr ip @sources accept`,
		`iifname @ports drop`,
		`"kdvaaaaaaaaaaaa" . 02:00:00:00:00:0a . 192.0.2.10`,
		`"kdvb" . 02:00:00:00:00:0b . 192.0.2.11`,
	} {
		if !strings.Contains(listing, want) {
			t.Errorf("the guard table lacks %q:\n%s", want, listing)
		}
	}
	if n := strings.Count(listing, " drop"); n != 1 {
		t.Errorf("Allow twice left %d drop rules, want 1:\n%s", n, listing)
	}
	// Allow rewrites the rules only when they are not what it writes: a
	// changed verdict is put back.
	if _, err := ns.Run(context.Background(), "", "sh", "-c",
		"nft -a list chain bridge kdive-test-guard prerouting | awk '/@ports drop/ {print $NF}' | xargs -I{} nft replace rule bridge kdive-test-guard prerouting handle {} iifname @ports accept"); err != nil {
		t.Fatal(err)
	}
	if err := g.Allow(a); err != nil {
		t.Fatal(err)
	}
	if out, _ := ns.Run(context.Background(), "", "nft", "list", "chain", "bridge", "kdive-test-guard", "prerouting"); !strings.Contains(string(out), "iifname @ports drop") || strings.Contains(string(out), "@ports accept") {
		t.Errorf("Allow did not put the changed drop rule back:\n%s", out)
	}
	srcs, err := g.Sources()
	if err != nil {
		t.Fatal(err)
	}
	if ports, err := g.Ports(); err != nil || len(ports) != 2 || !slices.Contains(ports, a.Port) || !slices.Contains(ports, b.Port) {
		t.Errorf("guarded ports read back: %v, %v; want %s and %s", ports, err, a.Port, b.Port)
	}
	if len(srcs) != 2 || !slices.ContainsFunc(srcs, func(s PortSource) bool {
		return s.Port == a.Port && s.Addr == a.Addr && s.MAC.String() == a.MAC.String()
	}) {
		t.Errorf("sources read back: %v; want %v and %v", srcs, a, b)
	}
	if err := g.Forget("kdvb", "kdvnothere"); err != nil {
		t.Fatal(err)
	}
	srcs, err = g.Sources()
	if err != nil {
		t.Fatal(err)
	}
	ports, err := g.Ports()
	if err != nil {
		t.Fatal(err)
	}
	if len(srcs) != 1 || srcs[0].Port != a.Port || !slices.Equal(ports, []string{a.Port}) {
		t.Errorf("after forgetting kdvb: sources %v, ports %v; want only %s", srcs, ports, a.Port)
	}
	if err := g.Allow(PortSource{Port: "kdvc", MAC: mac("02:00:00:00:00:0c"), Addr: netip.MustParseAddr("2001:db8::1")}); err == nil {
		t.Errorf("an IPv6 source was accepted")
	}
	for range 2 {
		if err := g.Delete(); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := ns.Run(context.Background(), "", "nft", "list", "tables"); err != nil || strings.Contains(out, "kdive-test-guard") {
		t.Errorf("table left after Delete (%v):\n%s", err, out)
	}
}

// BenchmarkPortGuardAllowForget: what the guard adds to one bridge-mode
// ADD and DEL (Allow, then Forget) on a node already guarding 100 ports,
// next to the baseline of the same node's netlink round trip for a link
// listing (b.Run "baseline-links").
func BenchmarkPortGuardAllowForget(b *testing.B) {
	ktest.RequireRoot(b)
	ns := ktest.NewNetNS(b)
	g := NewPortGuard(ns, "kdive-bench-guard")
	for i := range 100 {
		src := PortSource{Port: fmt.Sprintf("kdvbench%d", i), MAC: net.HardwareAddr{2, 0, 0, 0, 1, byte(i)},
			Addr: netip.AddrFrom4([4]byte{10, 9, 0, byte(i + 1)})}
		if err := g.Allow(src); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("baseline-links", func(b *testing.B) {
		for b.Loop() {
			if _, err := ns.Links(); err != nil {
				b.Fatal(err)
			}
		}
	})
	src := PortSource{Port: "kdvbenchnew", MAC: net.HardwareAddr{2, 0, 0, 0, 2, 1}, Addr: netip.MustParseAddr("10.9.1.1")}
	b.Run("allow-forget", func(b *testing.B) {
		for b.Loop() {
			if err := g.Allow(src); err != nil {
				b.Fatal(err)
			}
			if err := g.Forget(src.Port); err != nil {
				b.Fatal(err)
			}
		}
	})
}
