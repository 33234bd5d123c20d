package kernel_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/ktest"
)

// Address plan of these tests: 192.0.2.0/24 (TEST-NET-1) between
// namespaces the test creates; nothing leaves them.

func TestNetNSLifecycle(t *testing.T) {
	ktest.RequireRoot(t)
	name := "kdive-test-lifecycle"
	_ = kernel.DeleteNetNS(name) // left by an earlier run, if any
	n, err := kernel.CreateNetNS(name)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kernel.CreateNetNS(name); !errors.Is(err, os.ErrExist) {
		t.Errorf("creating %s twice: got %v, want ErrExist", name, err)
	}
	lo, err := n.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if !lo.Up {
		t.Errorf("lo of a new netns is down")
	}
	names, err := kernel.ListNetNS("kdive-test-life")
	if err != nil || len(names) != 1 || names[0] != name {
		t.Errorf("ListNetNS = %v, %v; want [%s]", names, err, name)
	}
	n.Close()
	if err := kernel.DeleteNetNS(name); err != nil {
		t.Fatal(err)
	}
	if err := kernel.DeleteNetNS(name); err != nil {
		t.Errorf("deleting a deleted netns: %v", err)
	}
	if _, err := os.Stat(filepath.Join(kernel.NetNSDir, name)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("netns file still there: %v", err)
	}
	if _, err := kernel.OpenNetNS("/etc/hostname"); err == nil {
		t.Errorf("opening a regular file as a netns succeeded")
	}
}

func TestVethAcrossNamespaces(t *testing.T) {
	ktest.RequireFeature(t, kernel.FeatureVeth)
	a, b := ktest.NewNetNS(t), ktest.NewNetNS(t)
	mac, _ := net.ParseMAC("02:00:00:00:00:0a")
	if err := a.AddVeth("eth0", kernel.LinkAttrs{MAC: mac, MTU: 1400, Alias: "kdive-test:a"}, b, "eth0", kernel.LinkAttrs{MTU: 1400}); err != nil {
		t.Fatal(err)
	}
	for i, n := range []*kernel.NetNS{a, b} {
		p := netip.MustParsePrefix([]string{"192.0.2.1/24", "192.0.2.2/24"}[i])
		if err := n.AddAddr("eth0", p); err != nil {
			t.Fatal(err)
		}
		if err := n.AddAddr("eth0", p); err != nil {
			t.Errorf("adding %s twice: %v", p, err)
		}
		if err := n.LinkUp("eth0"); err != nil {
			t.Fatal(err)
		}
	}
	l, err := a.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if l.Type != "veth" || l.MAC.String() != mac.String() || l.MTU != 1400 || l.Alias != "kdive-test:a" {
		t.Errorf("eth0 in a = %+v; want veth %s mtu 1400 alias kdive-test:a", l, mac)
	}
	if len(l.Addrs) == 0 || l.Addrs[0].String() != "192.0.2.1/24" {
		t.Errorf("eth0 addresses = %v", l.Addrs)
	}
	if got := tcpEcho(t, a, b, "192.0.2.2:7000"); got != "hello" {
		t.Errorf("echo across veth = %q", got)
	}
	if err := b.Sysctl("net.ipv4.ip_forward", "1"); err != nil {
		t.Fatal(err)
	}
	if v, err := b.ReadSysctl("net.ipv4.ip_forward"); err != nil || v != "1" {
		t.Errorf("ip_forward in b = %q, %v", v, err)
	}
	if v, err := a.ReadSysctl("net.ipv4.ip_forward"); err != nil || v != "0" {
		t.Errorf("ip_forward leaked into a: %q, %v", v, err)
	}
}

func TestRoutes(t *testing.T) {
	ktest.RequireFeature(t, kernel.FeatureVeth)
	a, b := ktest.NewNetNS(t), ktest.NewNetNS(t)
	if err := a.AddVeth("eth0", kernel.LinkAttrs{}, b, "eth0", kernel.LinkAttrs{}); err != nil {
		t.Fatal(err)
	}
	must(t, a.AddAddr("eth0", netip.MustParsePrefix("192.0.2.1/24")))
	must(t, a.LinkUp("eth0"))
	routes := []kernel.Route{
		{Dst: netip.MustParsePrefix("198.51.100.0/24"), Gateway: netip.MustParseAddr("192.0.2.254"), Dev: "eth0"},
		{Dst: netip.MustParsePrefix("203.0.113.0/24"), Blackhole: true},
		{Dst: netip.MustParsePrefix("10.9.0.0/16"), Gateway: netip.MustParseAddr("192.0.3.9"), Dev: "eth0", OnLink: true},
		{Dst: netip.MustParsePrefix("203.0.114.7/32"), Protocol: 0x6d, Nexthops: []kernel.Nexthop{
			{Gateway: netip.MustParseAddr("192.0.2.11"), Dev: "eth0"},
			{Gateway: netip.MustParseAddr("192.0.2.12"), Dev: "eth0"},
		}},
	}
	for _, r := range routes {
		must(t, a.ReplaceRoute(r))
		must(t, a.ReplaceRoute(r)) // idempotent
	}
	got, err := a.Routes()
	if err != nil {
		t.Fatal(err)
	}
	var s []string
	for _, r := range got {
		s = append(s, r.String())
	}
	all := strings.Join(s, "\n")
	for _, want := range []string{"198.51.100.0/24 via 192.0.2.254 dev eth0", "blackhole 203.0.113.0/24", "10.9.0.0/16 via 192.0.3.9 dev eth0 onlink",
		"203.0.114.7/32 nexthop via 192.0.2.11 dev eth0 nexthop via 192.0.2.12 dev eth0 proto 109"} {
		if !strings.Contains(all, want) {
			t.Errorf("routes lack %q:\n%s", want, all)
		}
	}
	// What Routes reads back is what was written, so a reconciler comparing
	// them leaves an unchanged route alone.
	for _, r := range got {
		if r.Dst == routes[3].Dst && !r.Equal(routes[3]) {
			t.Errorf("multipath route read back as %s; wrote %s", r, routes[3])
		}
	}
	for _, r := range routes {
		must(t, a.DeleteRoute(r))
		must(t, a.DeleteRoute(r))
	}
	got, err = a.Routes()
	must(t, err)
	for _, r := range got {
		if r.Dst.IsValid() && !netip.MustParsePrefix("192.0.2.0/24").Contains(r.Dst.Addr()) {
			t.Errorf("route left after delete: %s", r)
		}
	}
}

func TestNftInNamespace(t *testing.T) {
	ktest.RequireFeature(t, kernel.FeatureNFTables)
	a := ktest.NewNetNS(t)
	ctx := context.Background()
	must(t, a.Nft(ctx, "table inet kdive_t {\n\tcounter c {\n\t}\n}\n"))
	out, err := a.Run(ctx, "", "nft", "list", "tables")
	if err != nil || !strings.Contains(out, "kdive_t") {
		t.Errorf("nft list tables in netns = %q, %v", out, err)
	}
	if err := a.Nft(ctx, "add rule inet kdive_t nochain accept\n"); err == nil || !strings.Contains(err.Error(), "nft") {
		t.Errorf("bad nft script: err = %v, want an error naming nft", err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// tcpEcho listens in srv and dials from cli, returning what came back.
func tcpEcho(t *testing.T, cli, srv *kernel.NetNS, addr string) string {
	t.Helper()
	var ln net.Listener
	must(t, srv.Do(func() (err error) { ln, err = net.Listen("tcp", addr); return err }))
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.Copy(c, io.LimitReader(c, 5)) // the client reads what came back
	}()
	var c net.Conn
	must(t, cli.Do(func() (err error) { c, err = net.DialTimeout("tcp", addr, 3*time.Second); return err }))
	defer c.Close()
	must(t, c.SetDeadline(time.Now().Add(3*time.Second)))
	_, err := c.Write([]byte("hello"))
	must(t, err)
	b, err := io.ReadAll(c)
	must(t, err)
	return string(b)
}
