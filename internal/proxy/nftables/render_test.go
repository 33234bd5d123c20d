package nftables

import (
	"flag"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy"
	"github.com/kdive/kdive/internal/proxy/proxytest"
)

var update = flag.Bool("update", false, "rewrite testdata/*.nft golden files")

// TestRenderGolden compares the whole rendered ruleset of the case-table
// fixture with testdata/fixture.nft (go test -update rewrites it). Read the
// diff as a review of the ruleset's shape.
func TestRenderGolden(t *testing.T) {
	got := Render(proxytest.Fixture()).String()
	const file = "testdata/fixture.nft"
	if *update {
		if err := os.WriteFile(file, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Errorf("Render(Fixture()) differs from %s (go test -update rewrites it):\n%s", file, lineDiff(got, string(want)))
	}
}

func TestRenderIsPureAndShared(t *testing.T) {
	d := GenerateDesired(200, 4)
	a, b := Render(d).String(), Render(d).String()
	if a != b {
		t.Fatal("two renders of the same state differ")
	}
	rs := Render(d)
	// All 200 ports share one dispatch element each, one map and one
	// dnat rule: no chain per service.
	if got := len(rs.Chains); got != len(staticChains)+2 {
		t.Errorf("%d chains for 200 plain services, want %d (static + cluster-ip-4 + endpoints-4):\n%v", got, len(staticChains)+2, rs.ChainNames())
	}
	if n := rs.Sets["endpoints-4"].Len(); n != 800 {
		t.Errorf("endpoints-4 has %d elements, want 800", n)
	}
	if n := rs.Sets[setServiceIPs].Len(); n != 200 {
		t.Errorf("service-ips has %d elements, want 200", n)
	}
	// Elements know their service port and endpoint.
	e := rs.Sets["endpoints-4"].Elements()[5]
	if e.Service.String() != "bench/svc-000001:http" || e.Endpoint.String() != "10.0.0.6:8080" || e.Key.Bucket != 1 {
		t.Errorf("element 5 = %+v", e)
	}
	if !strings.Contains(a, "10.96.0.1 . tcp . 80 comment \"bench/svc-000000:http\" : goto cluster-ip-4,") {
		t.Errorf("service-ips element missing:\n%s", a[:2000])
	}
}

func TestPortIDs(t *testing.T) {
	fx := proxytest.Fixture()
	if got := portID(fx.Services[0].ServicePort); got != "default/affinity/tcp/80" {
		t.Errorf("portID = %q", got)
	}
	sp := fx.Services[0].ServicePort
	sp.Name.Namespace = strings.Repeat("n", 63)
	sp.Name.Name = strings.Repeat("s", 200)
	id := portID(sp)
	if len(id) > maxID || !validName(id) {
		t.Errorf("long portID = %q (%d bytes)", id, len(id))
	}
	sp.Name.Name += "x"
	if portID(sp) == id {
		t.Errorf("two long names share an id")
	}
}

// TestEveryBucketOnce: in every load-balancing map, each service address
// has buckets 0..N-1 (N from the map's dnat rule), each a different
// endpoint: numgen's even pick is an even pick of endpoints.
func TestEveryBucketOnce(t *testing.T) {
	for _, d := range []*proxy.Desired{proxytest.Fixture(), GenerateDesired(50, 7)} {
		rs := Render(d)
		for _, c := range rs.Chains {
			for _, r := range c.Rules {
				dm, ok := r.Stmt.(DNATMap)
				if !ok {
					continue
				}
				type svcKey struct {
					addr  netip.Addr
					proto model.Protocol
					port  uint16
				}
				buckets := map[svcKey]map[uint16]netip.AddrPort{}
				for _, e := range rs.Sets[dm.Map].Elements() {
					k := svcKey{e.Key.Addr, e.Key.Proto, e.Key.Port}
					if buckets[k] == nil {
						buckets[k] = map[uint16]netip.AddrPort{}
					}
					buckets[k][e.Key.Bucket] = e.Endpoint
				}
				for k, bs := range buckets {
					eps := map[netip.AddrPort]bool{}
					for b := range dm.N {
						ep, ok := bs[uint16(b)]
						if !ok {
							t.Errorf("%s: %v has no bucket %d", dm.Map, k, b)
						}
						eps[ep] = true
					}
					if len(bs) != dm.N || len(eps) != dm.N {
						t.Errorf("%s: %v has buckets %v, want %d distinct endpoints", dm.Map, k, bs, dm.N)
					}
				}
			}
		}
	}
}
