package ipvs

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/ktest"
	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy"
	"github.com/kdive/kdive/internal/proxy/proxytest"
)

// Reading the mode back. The tests whose names hold IPVS sync the case
// table's fixture into a namespace of the test VM with the real backend
// and inspect the kernel; the others check the interpretation without a
// kernel, over a snapshot built from a rendered plan.

var (
	webHTTP = model.ServicePortName{Namespace: "default", Name: "web", Port: "http", Protocol: model.ProtocolTCP}
	dnsTCP  = model.ServicePortName{Namespace: "kube-system", Name: "kube-dns", Port: "dns-tcp", Protocol: model.ProtocolTCP}
)

// snapshotOf is what the kernel would hold had Sync applied r.
func snapshotOf(r *Ruleset) *snapshot {
	s := &snapshot{rss: map[string][]kernel.RealServer{}, saved: parseSave(r.IptablesText()), flavour: "nft", names: r.names}
	eth := kernel.Link{Name: "eth0"}
	for _, a := range r.NodeIPs {
		eth.Addrs = append(eth.Addrs, netip.PrefixFrom(a, 24))
	}
	dummy := kernel.Link{Name: Device}
	for _, a := range r.Addresses {
		dummy.Addrs = append(dummy.Addrs, netip.PrefixFrom(a, 32))
	}
	s.links = []kernel.Link{{Name: "lo", Addrs: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/8")}}, eth, dummy}
	for _, vs := range r.VirtualServers {
		s.vss = append(s.vss, vs.VirtualServer)
		s.rss[vs.Key()] = vs.RealServers
	}
	for _, set := range r.Sets {
		s.sets = append(s.sets, kernel.IPSet{Name: set.Name, Type: set.Type, SkbInfo: set.SkbInfo, Entries: set.Entries})
	}
	return s
}

func TestNameComment(t *testing.T) {
	p := &proxy.Port{ServicePort: model.ServicePort{Name: webHTTP, ExternalPolicyLocal: true}}
	c := nameComment(p, KindNodePort)
	if c != "default/web:http NodePort external=Local" {
		t.Errorf("comment %q", c)
	}
	rec, ok := parseNameComment(c)
	want := recordedName{name: model.ServicePortName{Namespace: "default", Name: "web", Port: "http"}, kind: KindNodePort, externalLocal: true}
	if !ok || rec != want {
		t.Errorf("parse %q = %+v, %v; want %+v", c, rec, ok, want)
	}
	rec, ok = parseNameComment("default/local ClusterIP internal=Local")
	if !ok || rec.name.Port != "" || rec.name.Name != "local" || !rec.internalLocal || rec.externalLocal {
		t.Errorf("unnamed port: %+v, %v", rec, ok)
	}
	for _, bad := range []string{"", "web", "default/web", "/web ClusterIP", "default/web ClusterIP extra"} {
		if _, ok := parseNameComment(bad); ok {
			t.Errorf("parse %q succeeded", bad)
		}
	}
}

// TestInspectRendered reads back a rendered plan: the table it shows is
// ExpectedLB's, the configuration is recovered from the rules, and the
// case table passes over the rebuilt Ruleset.
func TestInspectRendered(t *testing.T) {
	d := proxytest.Fixture()
	in := snapshotOf(Render(d, Config{})).inspection()
	for _, diff := range proxy.CompareLB(in.LB(), proxy.ExpectedLB(Mode, d)) {
		t.Error(diff)
	}
	if len(in.notes) > 0 {
		t.Errorf("notes: %q", in.notes)
	}
	proxytest.Run(t, func(t *testing.T, d *proxy.Desired, p proxytest.Packet) proxytest.Result {
		return in.Trace(p)
	})

	for _, cfg := range []proxy.Config{
		{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16")}},
		{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16"), netip.MustParsePrefix("10.8.0.0/16")}},
		{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16")}, MasqueradeAll: true},
		{MasqueradeAll: true},
		{},
	} {
		d := proxytest.Fixture()
		d.Config = cfg
		lb := snapshotOf(Render(d, Config{})).inspection().LB()
		if !slices.Equal(lb.Cluster, cfg.ClusterCIDRs) || lb.MasqueradeAll != cfg.MasqueradeAll {
			t.Errorf("config %+v read back as cluster %v, masquerade-all %v", cfg, lb.Cluster, lb.MasqueradeAll)
		}
	}
}

// TestInspectUnnamed: without the name index a virtual server of the mode
// still shows, under its own key, so a comparison reports it.
func TestInspectUnnamed(t *testing.T) {
	s := snapshotOf(Render(proxytest.Fixture(), Config{}))
	s.names = slices.DeleteFunc(slices.Clone(s.names), func(e kernel.CommentedEntry) bool {
		return e.IP == netip.MustParseAddr("10.1.0.2") && e.Port == 80
	})
	lb := s.inspection().LB()
	unnamed := model.ServicePortName{Namespace: "?", Name: "TCP 10.1.0.2:80", Protocol: model.ProtocolTCP}
	if svc := lb.Service(unnamed); svc == nil || len(svc.Internal) != 3 || svc.Addresses[0].Kind != proxy.KindClusterIP {
		t.Errorf("unnamed virtual server: %+v", svc)
	}
	if svc := lb.Service(webHTTP); svc == nil || len(svc.Internal) != 0 || len(svc.External) != 3 {
		t.Errorf("web without its cluster IP: %+v", svc)
	}
}

// TestExplainAgreesWithTrace: Explain narrates the walk Trace takes; its
// verdict must be Trace's for every case, and its lines name what the
// packet met.
func TestExplainAgreesWithTrace(t *testing.T) {
	d := proxytest.Fixture()
	r := Render(d, Config{})
	in := snapshotOf(r).inspection()
	for _, c := range proxytest.Cases() {
		lines := in.Explain(c.Packet)
		if got, want := lines[len(lines)-1], "verdict: "+Trace(r, c.Packet).String(); got != want {
			t.Errorf("%s: Explain ends %q, Trace says %q:\n%s", c.Name, got, want, strings.Join(lines, "\n"))
		}
	}
	lines := in.Explain(proxytest.Packet{Src: proxytest.ExternalIP, Proto: model.ProtocolTCP, Dst: proxytest.NodeIP, Port: 30080})
	checkLines(t, lines,
		"nat KUBE-SERVICES: -A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT",
		"ipset KUBE-NODE-PORT-TCP holds 30080",
		"route: 172.20.1.10 is local (a node address)",
		"ipvs: TCP 172.20.1.10:30080 rr (NodePort of default/web:http)",
		"-> 10.0.1.2:8080 weight 1, masqueraded",
		"nat KUBE-POSTROUTING: -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully")
}

func checkLines(t *testing.T, lines []string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !slices.ContainsFunc(lines, func(l string) bool { return strings.TrimSpace(l) == w }) {
			t.Errorf("explanation lacks %q:\n%s", w, strings.Join(lines, "\n"))
		}
	}
}

// TestParseLine: the rendered rules read back as themselves; rules the
// walker cannot follow are refused.
func TestParseLine(t *testing.T) {
	r := Render(proxytest.Fixture(), Config{RejectUnknownPorts: true})
	for _, c := range r.Chains {
		for i, line := range c.Lines() {
			got, err := parseLine(line)
			if err != nil || !got.Equal(c.Rules[i]) {
				t.Errorf("%s: read back as %s, %v", line, got.String(), err)
			}
		}
	}
	for _, rule := range []string{"-A PREROUTING -i eth0 -j KUBE-SERVICES", "-A KUBE-SERVICES -m physdev --physdev-in x -j ACCEPT",
		"-A KUBE-MARK-MASQ -j MARK --set-xmark bogus", "-A KUBE-SERVICES -m statistic --mode random --probability 0.5 -j ACCEPT"} {
		if _, err := parseLine(rule); err == nil {
			t.Errorf("%s: accepted", rule)
		}
	}
}

// syncedNode syncs d with the real backend into a fresh namespace (owned
// by t) whose dummy node0 holds the node's address and routes the pod
// network (packets sent there vanish), and inspects it.
func syncedNode(t *testing.T, d *proxy.Desired) (*kernel.NetNS, proxy.Inspection, error) {
	ns := ktest.NewNetNS(t)
	if _, err := ns.EnsureDummy("node0", kernel.LinkAttrs{}); err != nil {
		return nil, nil, err
	}
	for _, step := range []func() error{
		func() error { return ns.AddAddr("node0", netip.PrefixFrom(d.Node.IPs[0], 24)) },
		func() error { return ns.LinkUp("node0") },
		func() error {
			return ns.ReplaceRoute(kernel.Route{Dst: netip.MustParsePrefix("10.0.0.0/16"), Dev: "node0"})
		},
		func() error { return New(Options{NetNS: ns}).Sync(context.Background(), d) },
	} {
		if err := step(); err != nil {
			return nil, nil, err
		}
	}
	insp, err := Inspect(context.Background(), ns)
	return ns, insp, err
}

func requireIPVS(t *testing.T) {
	ktest.RequireFeature(t, kernel.FeatureIPVS)
	ktest.RequireFeature(t, kernel.FeatureDummy)
}

// TestIPVSInspectFixture syncs the fixture and reads it back: the table
// matches ExpectedLB, with weights and counters; Explain names the
// virtual server. Then a real server is deleted and another set to weight
// 0 by hand: the table shows both, Trace follows the kernel.
func TestIPVSInspectFixture(t *testing.T) {
	requireIPVS(t)
	d := proxytest.Fixture()
	ns, insp, err := syncedNode(t, d)
	if err != nil {
		t.Fatal(err)
	}
	// One connection attempt from the node, for the counters: answered
	// or not, its SYN is counted.
	if err := ns.Do(func() error {
		if c, err := net.DialTimeout("tcp4", "10.1.0.2:80", 300*time.Millisecond); err == nil {
			c.Close()
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// IPVS sums its per-CPU counters in the rate estimator's pass, every
	// two seconds.
	var lb *proxy.LBTable
	ktest.Eventually(t, 5*time.Second, webHTTP.String()+"'s packet counter", func() error {
		if insp, err = Inspect(t.Context(), ns); err != nil {
			return err
		}
		lb = insp.LB()
		if c := lb.Service(webHTTP); c != nil && (c.Counters == nil || c.Counters.Packets == 0) {
			return fmt.Errorf("counters %+v", c.Counters)
		}
		return nil
	})
	for _, diff := range proxy.CompareLB(lb, proxy.ExpectedLB(Mode, d)) {
		t.Error(diff)
	}
	if lb.Mode != Mode || !slices.Equal(lb.Cluster, d.Config.ClusterCIDRs) || lb.MasqueradeAll {
		t.Errorf("table mode %q, cluster %v, masquerade-all %v", lb.Mode, lb.Cluster, lb.MasqueradeAll)
	}
	web := lb.Service(webHTTP)
	if web == nil {
		t.Fatalf("no %s in %+v", webHTTP, lb)
	}
	for _, e := range append(slices.Clone(web.Internal), web.External...) {
		if e.Weight != 1 {
			t.Errorf("%s endpoint %s has weight %d", webHTTP, e.Addr, e.Weight)
		}
	}
	if web.Counters == nil || web.Counters.Packets == 0 || web.Counters.Bytes == 0 {
		t.Errorf("%s counters %+v after a connection attempt", webHTTP, web.Counters)
	}
	pod := proxytest.Packet{Src: proxytest.LocalPod, Proto: model.ProtocolTCP, Dst: netip.MustParseAddr("10.1.0.2"), Port: 80}
	lines := insp.Explain(pod)
	if slices.ContainsFunc(lines, func(l string) bool { return strings.HasPrefix(l, "note:") }) {
		t.Errorf("Inspect noted trouble reading the kernel:\n%s", strings.Join(lines, "\n"))
	}
	checkLines(t, lines,
		"ipset KUBE-CLUSTER-IP holds 10.1.0.2,tcp:80",
		"route: 10.1.0.2 is local (on kube-ipvs0)",
		"ipvs: TCP 10.1.0.2:80 rr (ClusterIP of default/web:http)",
		"-> 10.0.2.2:8080 weight 1, not masqueraded",
		"verdict: DNAT 10.0.1.2:8080 10.0.2.2:8080 10.0.3.2:8080")

	h, err := ns.OpenIPVS()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	vs := func(addr string, port uint16) kernel.VirtualServer {
		return kernel.VirtualServer{Address: netip.MustParseAddr(addr), Protocol: "TCP", Port: port, Scheduler: "rr"}
	}
	if err := h.DeleteRealServer(vs("10.1.0.2", 80), kernel.RealServer{Address: netip.MustParseAddrPort("10.0.2.2:8080")}); err != nil {
		t.Fatal(err)
	}
	if err := h.UpdateRealServer(vs("10.1.0.10", 53), kernel.RealServer{Address: netip.MustParseAddrPort("10.0.2.3:53")}); err != nil {
		t.Fatal(err)
	}
	insp, err = Inspect(t.Context(), ns)
	if err != nil {
		t.Fatal(err)
	}
	diffs := proxy.CompareLB(insp.LB(), proxy.ExpectedLB(Mode, d))
	want := []string{
		"default/web:http/TCP: internal endpoints [10.0.1.2:8080=0.500 10.0.3.2:8080=0.500], want [10.0.1.2:8080=0.333 10.0.2.2:8080=0.333 10.0.3.2:8080=0.333]",
		"kube-system/kube-dns:dns-tcp/TCP: internal endpoints [10.0.1.3:53=1.000 10.0.2.3:53=0.000], want [10.0.1.3:53=0.500 10.0.2.3:53=0.500]",
	}
	if !slices.Equal(diffs, want) {
		t.Errorf("after deleting a real server and draining another, CompareLB says\n%s\nwant\n%s", strings.Join(diffs, "\n"), strings.Join(want, "\n"))
	}
	if got := insp.LB().Service(dnsTCP).Internal; len(got) != 2 || got[1].Weight != 0 || got[1].Probability != 0 {
		t.Errorf("%s internal endpoints %+v, want 10.0.2.3:53 at weight 0", dnsTCP, got)
	}
	if got := insp.Trace(pod).String(); got != "DNAT 10.0.1.2:8080 10.0.3.2:8080" {
		t.Errorf("trace after the deletion: %s", got)
	}
	dns := pod
	dns.Dst, dns.Port = netip.MustParseAddr("10.1.0.10"), 53
	checkLines(t, insp.Explain(dns), "-> 10.0.2.3:53 weight 0: draining, no new connections")
}

// TestIPVSInspectTraceCases runs the case table over the kernel's state:
// the fixture synced into a namespace, read back, traced.
func TestIPVSInspectTraceCases(t *testing.T) {
	requireIPVS(t)
	cache := map[*proxy.Desired]proxy.Inspection{}
	proxytest.Run(t, func(st *testing.T, d *proxy.Desired, p proxytest.Packet) proxytest.Result {
		insp, ok := cache[d]
		if !ok {
			var err error
			// The namespace belongs to the outer test: it outlives this case.
			if _, insp, err = syncedNode(t, d); err != nil {
				st.Fatal(err)
			}
			cache[d] = insp
		}
		return insp.Trace(p)
	})
}
