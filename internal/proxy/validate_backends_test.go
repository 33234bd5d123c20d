package proxy_test

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/ktest"
	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy"
	"github.com/kdive/kdive/internal/proxy/iptables"
	"github.com/kdive/kdive/internal/proxy/ipvs"
	"github.com/kdive/kdive/internal/proxy/nftables"
)

// What reaches the backends after the tracker: a valid snapshot, but one
// whose sizes or overlaps no sane cluster has. Every backend renders it,
// and the nftables table (the default mode) is accepted by the kernel.

var badNode = model.Node{Name: "node-0", IPs: []netip.Addr{netip.MustParseAddr("172.20.1.10")}}

func badDesired(ports ...model.ServicePort) *proxy.Desired {
	cfg := proxy.Config{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}
	d := proxy.NewDesired(cfg, badNode)
	for _, sp := range ports {
		d.Services = append(d.Services, proxy.Resolve(sp, badNode))
	}
	return d
}

func badPort(name, ip string, port, nodePort, endpoints int) model.ServicePort {
	sp := model.ServicePort{
		Name:       model.ServicePortName{Namespace: "default", Name: name, Port: "http", Protocol: model.ProtocolTCP},
		ClusterIPs: []netip.Addr{netip.MustParseAddr(ip)}, Port: port, NodePort: nodePort,
	}
	for n := range endpoints {
		sp.Endpoints = append(sp.Endpoints, model.Endpoint{
			IP:   netip.AddrFrom4([4]byte{10, byte(2 + n>>16), byte(n >> 8), byte(n)}),
			Port: 8080, NodeName: fmt.Sprintf("node-%d", n%100), Ready: true, Serving: true,
		})
	}
	return sp
}

// TestHugeServiceInEveryBackend: 100,000 endpoints behind one service, and
// a small service next to it, render in every mode in bounded time; in a
// test namespace the kernel takes the nftables table, and the small
// service's element is there.
func TestHugeServiceInEveryBackend(t *testing.T) {
	if testing.Short() {
		t.Skip("renders 100,000 endpoints in three modes")
	}
	d := badDesired(badPort("huge", "10.96.0.2", 80, 30080, 100_000), badPort("small", "10.96.0.3", 80, 0, 1))
	for _, r := range []struct {
		mode   string
		render func() int
	}{
		{"nftables", func() int { return len(nftables.Render(d).String()) }},
		{"iptables", func() int { return len(iptables.Render(d).Text()) }},
		{"ipvs", func() int { return len(ipvs.Render(d, ipvs.Config{}).String()) }},
	} {
		start := time.Now()
		n := r.render()
		took := time.Since(start)
		t.Logf("%s: %d bytes of rules in %v", r.mode, n, took)
		if took > time.Minute {
			t.Errorf("%s took %v", r.mode, took)
		}
	}
	ktest.RequireFeature(t, kernel.FeatureNFTables)
	ns := ktest.NewNetNS(t)
	p := nftables.New(nftables.Options{NetNS: ns})
	t.Cleanup(func() { p.Close() })
	start := time.Now()
	if err := p.Sync(context.Background(), d); err != nil {
		t.Fatalf("sync 100,000 endpoints: %v", err)
	}
	t.Logf("nftables: first sync of 100,000 endpoints in %v", time.Since(start))
	out, err := ns.Run(context.Background(), "", "nft", "list", "map", "ip", nftables.Table, "service-ips")
	if err != nil || !strings.Contains(out, "10.96.0.3 . tcp . 80") || !strings.Contains(out, "10.96.0.2 . tcp . 80") {
		t.Errorf("service-ips after the sync (%v):\n%.2000s", err, out)
	}
}

// TestOverlappingServicesInEveryBackend: two services claiming the same
// cluster IP and port, or the same node port (which the API server
// refuses, but an agent must survive): every mode renders both, the
// first keeps the address, and the kernel takes the nftables table; when
// the first goes away, the second takes over.
func TestOverlappingServicesInEveryBackend(t *testing.T) {
	a := badPort("a", "10.96.0.2", 80, 30080, 2)
	b := badPort("b", "10.96.0.2", 80, 30080, 3)
	b.Endpoints = b.Endpoints[2:] // a different endpoint set
	c := badPort("c", "10.96.0.4", 80, 30080, 1)
	d := badDesired(a, b, c)
	nftables.Render(d)
	iptables.Render(d)
	ipvs.Render(d, ipvs.Config{})

	ktest.RequireFeature(t, kernel.FeatureNFTables)
	ns := ktest.NewNetNS(t)
	p := nftables.New(nftables.Options{NetNS: ns})
	t.Cleanup(func() { p.Close() })
	ctx := context.Background()
	if err := p.Sync(ctx, d); err != nil {
		t.Fatalf("sync overlapping services: %v", err)
	}
	elem := func() string {
		out, err := ns.Run(ctx, "", "nft", "list", "map", "ip", nftables.Table, "service-ips")
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(out, ",") {
			if strings.Contains(l, "10.96.0.2 . tcp . 80") {
				return strings.TrimSpace(l)
			}
		}
		return ""
	}
	if e := elem(); !strings.Contains(e, `"default/a:http"`) {
		t.Errorf("10.96.0.2:80 is %q, want default/a's", e)
	}
	d2 := badDesired(b, c)
	if err := p.Sync(ctx, d2); err != nil {
		t.Fatalf("sync without a: %v", err)
	}
	if e := elem(); !strings.Contains(e, `"default/b:http"`) {
		t.Errorf("without a, 10.96.0.2:80 is %q, want default/b's", e)
	}
}
