package ipvs

import (
	"flag"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy"
	"github.com/kdive/kdive/internal/proxy/proxytest"
)

var update = flag.Bool("update", false, "rewrite testdata/fixture.txt")

// TestRenderGolden compares the whole plan for the case table's fixture
// (kube-ipvs0, ipvsadm view, sets, iptables) with testdata/fixture.txt;
// go test -update rewrites it. Read a diff as a review of the plan.
func TestRenderGolden(t *testing.T) {
	got := Render(proxytest.Fixture(), Config{}).String()
	const file = "testdata/fixture.txt"
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
		gl, wl := strings.Split(got, "\n"), strings.Split(string(want), "\n")
		for i := range max(len(gl), len(wl)) {
			g, w := line(gl, i), line(wl, i)
			if g != w {
				t.Fatalf("Render(Fixture()) differs from %s at line %d (go test -update rewrites it):\n got %q\nwant %q", file, i+1, g, w)
			}
		}
	}
}

func line(ls []string, i int) string {
	if i < len(ls) {
		return ls[i]
	}
	return "<end>"
}

func generated(n int) *proxy.Desired {
	node := model.Node{Name: "node-1", IPs: []netip.Addr{netip.MustParseAddr("172.20.1.10")}}
	cfg := proxy.Config{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16")}}
	d := proxy.NewDesired(cfg, node)
	for i := range n {
		sp := model.ServicePort{
			Name:       model.ServicePortName{Namespace: "bench", Name: fmt.Sprintf("svc-%04d", i), Port: "http", Protocol: model.ProtocolTCP},
			ClusterIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)})}, Port: 80,
			NodePort: 30000 + i, ExternalPolicyLocal: i%2 == 0,
			Endpoints: []model.Endpoint{{IP: netip.AddrFrom4([4]byte{10, 0, 2, byte(i)}), Port: 8080, NodeName: "node-2", Ready: true, Serving: true}},
		}
		d.Services = append(d.Services, proxy.Resolve(sp, node))
	}
	return d
}

// TestRenderConstantRules: the iptables rules are the same for one
// service or a thousand; services live in ipset entries and IPVS.
func TestRenderConstantRules(t *testing.T) {
	one, many := Render(generated(1), Config{}), Render(generated(1000), Config{})
	if one.IptablesText() != many.IptablesText() {
		t.Errorf("iptables rules change with the number of services")
	}
	if n := len(many.VirtualServers); n != 1000+1000+500 { // cluster IPs, NodePorts, short circuits
		t.Errorf("%d virtual servers for 1000 services, want 2500", n)
	}
	if a, b := Render(generated(300), Config{}).String(), Render(generated(300), Config{}).String(); a != b {
		t.Errorf("two renders of one snapshot differ")
	}
}

// TestShortCircuitMarksStay: a service's firewall mark does not move when
// others come and go.
func TestShortCircuitMarksStay(t *testing.T) {
	small, big := shortCircuitMarks(generated(10)), shortCircuitMarks(generated(2000))
	if len(small) != 5 || len(big) != 1000 {
		t.Fatalf("%d and %d marks, want 5 and 1000", len(small), len(big))
	}
	seen := map[uint32]bool{}
	for name, m := range big {
		if !ourMark(m) || seen[m] {
			t.Errorf("%s: mark %#x reused or outside %#x", name, m, shortCircuitMask)
		}
		seen[m] = true
	}
	for name, m := range small {
		if big[name] != m {
			t.Errorf("%s: mark %#x with 10 services, %#x with 2000", name, m, big[name])
		}
	}
}

func TestSchedulersAndWarnings(t *testing.T) {
	d := proxytest.Fixture()
	annotated := map[string]string{"default/web": "mh", "default/affinity": "sh", "default/empty": "bogus"}
	for _, p := range d.Services {
		p.IPVSScheduler = annotated[p.Name.Namespace+"/"+p.Name.Name]
	}
	r := Render(d, Config{Scheduler: "wlc"})
	scheds := map[string]string{}
	for _, vs := range r.VirtualServers {
		if vs.Kind == KindClusterIP {
			scheds[vs.Service.String()] = vs.Scheduler + flagsText(vs.VirtualServer)
		}
	}
	want := map[string]string{
		"default/web:http": "mh mh-fallback,mh-port", "default/web:https": "mh mh-fallback,mh-port",
		"default/affinity": "sh persistent 10800 sh-fallback", "default/empty": "wlc", "default/local": "wlc",
	}
	for svc, w := range want {
		if scheds[svc] != w {
			t.Errorf("%s: scheduler %q, want %q", svc, scheds[svc], w)
		}
	}
	if !slices.ContainsFunc(r.Warnings, func(w string) bool { return strings.Contains(w, `unknown ipvs scheduler "bogus"`) }) {
		t.Errorf("no warning for an unknown scheduler: %q", r.Warnings)
	}

	// Two services claiming one external address and port: the first (by
	// name) keeps it.
	dup := d.Services[0].ServicePort // default/affinity
	dup.Name.Name, dup.ExternalIPs, dup.IPVSScheduler = "zz-dup", []netip.Addr{netip.MustParseAddr("203.0.113.10")}, ""
	d.Services = append(d.Services, proxy.Resolve(dup, d.Node))
	r = Render(d, Config{})
	if vs := r.VirtualServer("TCP 203.0.113.10:80"); vs == nil || vs.Service.Name != "web" {
		t.Errorf("TCP 203.0.113.10:80 belongs to %v, want default/web", vs)
	}
	if !slices.ContainsFunc(r.Warnings, func(w string) bool { return strings.Contains(w, "default/zz-dup") }) {
		t.Errorf("no warning for the claimed address: %q", r.Warnings)
	}
}

// TestTraceRejectUnknownPorts: with kube-proxy's KUBE-IPVS-FILTER, a
// service address's other ports are refused instead of reaching the
// node's own sockets; service ports still work.
func TestTraceRejectUnknownPorts(t *testing.T) {
	r := Render(proxytest.Fixture(), Config{RejectUnknownPorts: true})
	pod := proxytest.LocalPod
	for _, c := range []struct {
		dst  string
		port int
		want proxytest.Verdict
	}{
		{"10.1.0.2", 81, proxytest.REJECT},
		{"10.1.0.2", 80, proxytest.DNAT},
		{"203.0.113.20", 22, proxytest.REJECT},
		{"172.20.1.10", 22, proxytest.ACCEPT}, // the node's own address is not filtered
	} {
		p := proxytest.Packet{Src: pod, Proto: model.ProtocolTCP, Dst: netip.MustParseAddr(c.dst), Port: c.port}
		if got := Trace(r, p); got.Verdict != c.want {
			t.Errorf("%s: %s, want %s", p, got, c.want)
		}
	}
}

func TestSyncRejectsUnknownScheduler(t *testing.T) {
	err := New(Options{Scheduler: "fastest"}).Sync(t.Context(), proxytest.Fixture())
	if err == nil || !strings.Contains(err.Error(), `scheduler "fastest" is not one of rr, wrr,`) {
		t.Errorf("Sync with an unknown scheduler: %v", err)
	}
	if New(Options{}).Mode() != "ipvs" {
		t.Errorf("mode %q", New(Options{}).Mode())
	}
}
