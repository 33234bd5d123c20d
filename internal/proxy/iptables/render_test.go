package iptables

import (
	"flag"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy"
	"github.com/kdive/kdive/internal/xtables"
)

var update = flag.Bool("update", false, "rewrite testdata/golden.rules")

// goldenDesired has upstream proxier_test's ns1/svc1 (two endpoints), ns2/svc2
// (NodePort, eTP Local, health check, LoadBalancer with source ranges)
// and a UDP port without endpoints.
func goldenDesired() *proxy.Desired {
	node := model.Node{Name: "node-1", IPs: []netip.Addr{netip.MustParseAddr("192.168.0.2")}}
	cfg := proxy.Config{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}
	d := proxy.NewDesired(cfg, node)
	ep := func(ip string, port int, node string) model.Endpoint {
		return model.Endpoint{IP: netip.MustParseAddr(ip), Port: port, NodeName: node, Ready: true, Serving: true}
	}
	svc1 := model.ServicePort{
		Name:       model.ServicePortName{Namespace: "ns1", Name: "svc1", Port: "p80", Protocol: model.ProtocolTCP},
		ClusterIPs: []netip.Addr{netip.MustParseAddr("172.30.0.41")}, Port: 80,
		Endpoints: []model.Endpoint{ep("10.180.0.1", 80, "node-1"), ep("10.180.2.1", 80, "node-2")},
	}
	svc2 := model.ServicePort{
		Name:       model.ServicePortName{Namespace: "ns2", Name: "svc2", Port: "p80", Protocol: model.ProtocolTCP},
		ClusterIPs: []netip.Addr{netip.MustParseAddr("172.30.0.42")}, Port: 80, NodePort: 3001,
		ExternalPolicyLocal: true, HealthCheckNodePort: 30000,
		LoadBalancerIPs:          []netip.Addr{netip.MustParseAddr("1.2.3.4")},
		LoadBalancerSourceRanges: []netip.Prefix{netip.MustParsePrefix("203.0.113.0/25")},
		Endpoints:                []model.Endpoint{ep("10.180.0.2", 80, "node-1"), ep("10.180.1.2", 80, "node-2")},
	}
	svc3 := model.ServicePort{
		Name:       model.ServicePortName{Namespace: "ns3", Name: "svc3", Port: "p53", Protocol: model.ProtocolUDP},
		ClusterIPs: []netip.Addr{netip.MustParseAddr("172.30.0.43")}, Port: 53,
	}
	for _, sp := range []model.ServicePort{svc1, svc2, svc3} {
		d.Services = append(d.Services, proxy.Resolve(sp, node))
	}
	return d
}

// TestRenderGolden compares the whole restore text (as upstream's
// proxier_test does) with testdata/golden.rules.
func TestRenderGolden(t *testing.T) {
	got := Render(goldenDesired()).Text()
	if *update {
		if err := os.WriteFile("testdata/golden.rules", []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile("testdata/golden.rules")
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Errorf("rendered rules differ from testdata/golden.rules (go test -update to accept):\n%s", lineDiff(string(want), got))
	}
}

func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	for i := 0; i < len(w) || i < len(g); i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			b.WriteString("line " + strconv.Itoa(i+1) + ":\n- " + wl + "\n+ " + gl + "\n")
		}
	}
	return b.String()
}

// TestChainNames: upstream's hashes, for the names upstream's tests use.
func TestChainNames(t *testing.T) {
	c := newNameCache()
	svc1 := c.port(model.ServicePortName{Namespace: "ns1", Name: "svc1", Port: "p80", Protocol: model.ProtocolTCP})
	svc2 := c.port(model.ServicePortName{Namespace: "ns2", Name: "svc2", Port: "p80", Protocol: model.ProtocolTCP})
	for got, want := range map[string]string{
		svc1.svc: "KUBE-SVC-XPGD46QRK7WJZT7O",
		svc1.endpoint(netip.MustParseAddrPort("10.180.0.1:80")).chain: "KUBE-SEP-SXIVWICOYRO3J4NJ",
		svc2.fw:  "KUBE-FW-GNZBNJ2PO5MGZ6GT",
		svc2.ext: "KUBE-EXT-GNZBNJ2PO5MGZ6GT",
		svc2.svl: "KUBE-SVL-GNZBNJ2PO5MGZ6GT",
		svc2.endpoint(netip.MustParseAddrPort("10.180.0.2:80")).chain: "KUBE-SEP-RS4RBKLTHTF2IUXJ",
	} {
		if got != want {
			t.Errorf("got %s, want %s", got, want)
		}
	}
	for _, ep := range []string{"10.180.0.1:80", "10.1.2.3:65535", "192.0.2.255:1"} {
		ap := netip.MustParseAddrPort(ep)
		if got, _ := svc2.sepName(ap); got != endpointChainName(svc2.str, "tcp", ep) {
			t.Errorf("sepName(%s) = %s, want %s", ep, got, endpointChainName(svc2.str, "tcp", ep))
		}
	}
}

// TestProbabilities: the statistic rules, with the probabilities as
// written (%0.10f), give each of n endpoints 1/n.
func TestProbabilities(t *testing.T) {
	for n := 1; n <= 40; n++ {
		d := scaleDesired(1, n)
		rs := Render(d)
		svc := rs.Services[0].Chains[0]
		reach := 1.0
		share := map[netip.AddrPort]float64{}
		for _, r := range svc.Rules {
			if r.Jump == chainMarkMasq {
				continue
			}
			p := 1.0
			if r.Probability != 0 {
				var err error
				if p, err = strconv.ParseFloat(xtables.ProbabilityText(r.Probability), 64); err != nil {
					t.Fatal(err)
				}
			}
			share[r.Endpoint] += reach * p
			reach *= 1 - p
		}
		if len(share) != n {
			t.Fatalf("n=%d: %d endpoints reachable", n, len(share))
		}
		for ep, s := range share {
			if d := s - 1/float64(n); d > 1e-8 || d < -1e-8 {
				t.Errorf("n=%d: %s gets %.12f, want %.12f", n, ep, s, 1/float64(n))
			}
		}
	}
}

// TestLargeCluster: beyond 1,000 endpoints the per-endpoint rules lose
// their comments (as upstream's large cluster mode), the others keep
// them, and the Ruleset still knows every rule's port and endpoint.
func TestLargeCluster(t *testing.T) {
	for _, c := range []struct {
		services int
		large    bool
	}{{100, false}, {101, true}} {
		rs := Render(scaleDesired(c.services, 10))
		for _, sc := range rs.Services {
			for _, ch := range sc.Chains {
				for _, r := range ch.Rules {
					perEndpoint := r.Endpoint.IsValid()
					if r.Service == nil || perEndpoint && r.Jump != chainMarkMasq && r.Jump != targetDNAT && !strings.HasPrefix(r.Jump, prefixSEP) {
						t.Fatalf("rule %q lacks its port or endpoint", r.String())
					}
					if perEndpoint && (r.Comment == "") != c.large {
						t.Fatalf("%d services: rule %q", c.services, r.String())
					}
				}
			}
		}
		for _, r := range rs.Chain(TableNAT, chainServices).Rules {
			if r.Comment == "" {
				t.Errorf("%d services: KUBE-SERVICES rule without comment: %s", c.services, r.String())
			}
		}
	}
}
