package nftables

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/kdive/kdive/internal/kernel/ktest"
	"github.com/kdive/kdive/internal/kernel/nft"
	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy"
	"github.com/kdive/kdive/internal/proxy/proxytest"
)

// TestKernelLongServiceNames: service ports whose names are as long as
// Kubernetes allows (63-character namespace and name, 15-character port
// name: 143 bytes, over nft's 128-byte comments) are programmed alongside
// the others, with shortened comments; the table reads back (Inspect, LB)
// naming them in full once the names are known; a new proxier adopts the
// table without rewriting it; deleting one's element is repaired by the
// next full Sync, and a table read back intact is left alone.
func TestKernelLongServiceNames(t *testing.T) {
	kp := newKernelProxier(t)
	ctx := context.Background()
	ip := netip.MustParseAddr
	s := stateOf(proxytest.Fixture())
	// Three long ports: two sharing namespace and name (shared chains;
	// an affinity port with chains and sets of its own), one whose name
	// differs from theirs only in its last character (Local policy, a
	// LoadBalancer IP with source ranges: firewall-ips).
	long := longName("", "", "metrics-exporte")
	affinity := longName("", "", "admin-console-1")
	twin := longName("", "y", "metrics-exporte")
	add := func(from string, n model.ServicePortName, clusterIP string, nodePort int, edit func(*model.ServicePort)) {
		sp := s.ports[portNamed(t, s, from)]
		sp.Name = n
		sp.ClusterIPs = []netip.Addr{ip(clusterIP)}
		sp.NodePort = nodePort
		edit(&sp)
		s.ports[n] = sp
	}
	add("default/web:http", long, "10.1.0.50", 30090, func(sp *model.ServicePort) { sp.ExternalIPs = []netip.Addr{ip("203.0.113.50")} })
	add("default/affinity", affinity, "10.1.0.51", 0, func(*model.ServicePort) {})
	add("default/local", twin, "10.1.0.52", 30092, func(sp *model.ServicePort) { sp.LoadBalancerIPs = []netip.Addr{ip("203.0.113.52")} })
	d := s.desired()
	for _, addr := range d.Node.IPs {
		if err := kp.ns.AddAddr("lo", netip.PrefixFrom(addr, 32)); err != nil {
			t.Fatal(err)
		}
	}

	if err := kp.Sync(ctx, d); err != nil {
		t.Fatalf("Sync with long service names: %v", err)
	}
	listed := listTable(t, kp.ns)
	for _, n := range []model.ServicePortName{long, affinity, twin} {
		c := elemComment(n)
		if len(c) > maxComment || c == n.String() || !strings.Contains(listed, `comment "`+c+`"`) {
			t.Errorf("the table does not hold %s with the shortened comment %q:\n%s", n, c, listed)
		}
	}
	if !strings.Contains(listed, `comment "default/web:http"`) {
		t.Errorf("short names are no longer the comment:\n%s", listed)
	}
	if want := freshList(t, ktest.NewNetNS(t), Render(d)); listed != want {
		t.Errorf("the table differs from a fresh load of Render:\n%s", lineDiff(listed, want))
	}

	// Read back without the names: the shortened names, no error.
	insp := mustInspect(t, kp.ns)
	short, err := parsePortName(elemComment(long), long.Protocol)
	if err != nil {
		t.Fatal(err)
	}
	if lb := insp.LB(); lb.Service(short) == nil || lb.Service(long) != nil {
		t.Errorf("without names, the read-back does not name %s as its comment %s", long, short)
	}
	// With them (as `kdive verify` gives them): the full names, and the
	// table is what ExpectedLB says.
	r, ok := insp.(interface{ ResolveNames([]model.ServicePortName) })
	if !ok {
		t.Fatal("the nftables inspection has no ResolveNames")
	}
	var names []model.ServicePortName
	for _, sp := range d.Services {
		names = append(names, sp.Name)
	}
	r.ResolveNames(names)
	lb := insp.LB()
	checkLB(t, lb, d)
	if got, kind := lb.Lookup(model.ProtocolTCP, netip.MustParseAddrPort("203.0.113.52:80")); got == nil || got.Name != twin || kind != proxy.KindLoadBalancer {
		t.Errorf("203.0.113.52:80 is %v of %+v, want a LoadBalancer IP of %s", kind, got, twin)
	}
	pkt := proxy.Packet{Src: proxytest.LocalPod, Proto: model.ProtocolTCP, Dst: ip("10.1.0.50"), Port: 80}
	if res := insp.Trace(pkt); res.Verdict != proxy.DNAT {
		t.Errorf("trace to 10.1.0.50:80: %v, want DNAT", res)
	}
	explained := strings.Join(insp.Explain(pkt), "\n")
	if !strings.Contains(explained, `comment "`+elemComment(long)+`"`) || !strings.Contains(explained, "result for service "+long.String()) {
		t.Errorf("Explain does not show the kernel's comment and the full name:\n%s", explained)
	}

	// An incremental change to a long port.
	s.edit(t, long.String(), func(sp *model.ServicePort) { sp.Endpoints = sp.Endpoints[:1] })
	d = s.desired(long)
	runs := kp.runs
	if err := kp.Sync(ctx, d); err != nil {
		t.Fatalf("incremental Sync: %v\nscript:\n%s", err, kp.last)
	}
	if kp.runs != runs+1 || strings.HasPrefix(kp.last, "add table") {
		t.Errorf("the change took %d nft runs (replace: %v), want one incremental", kp.runs-runs, strings.HasPrefix(kp.last, "add table"))
	}
	d.Changed = nil
	want := freshList(t, ktest.NewNetNS(t), Render(d))
	if got := listTable(t, kp.ns); got != want {
		t.Fatalf("after the change the table differs from a fresh load:\n%s", lineDiff(got, want))
	}
	kp.Close()

	// A new proxier adopts the table: nothing to send.
	second := &kernelProxier{Proxier: New(Options{NetNS: kp.ns}), ns: kp.ns}
	t.Cleanup(func() { second.Close() })
	second.run = func(ctx context.Context, tx *nft.Transaction) error {
		script := tx.String()
		second.runs++
		second.last = script
		return second.apply(ctx, tx)
	}
	var repaired [][]string
	second.opts.OnRepair = func(objs []string) { repaired = append(repaired, objs) }
	if err := second.Sync(ctx, d); err != nil {
		t.Fatal(err)
	}
	if second.runs != 0 {
		t.Errorf("adopting the table ran nft %d times:\n%s", second.runs, second.last)
	}

	// Drift: a long port's element deleted is put back by the difference.
	const elem = "element service-ips { 10.1.0.50 . tcp . 80 }"
	if err := kp.ns.Nft(ctx, "delete element ip kdive-proxy service-ips { 10.1.0.50 . tcp . 80 }"); err != nil {
		t.Fatal(err)
	}
	if err := second.Sync(ctx, d); err != nil {
		t.Fatalf("full Sync: %v\nscript:\n%s", err, second.last)
	}
	if second.runs != 1 || strings.HasPrefix(second.last, "add table") || len(repaired) != 1 || !containsString(repaired[0], elem) {
		t.Errorf("the repair took %d nft runs (%q), reported %q; want one difference naming %q", second.runs, second.last, repaired, elem)
	}
	if got := listTable(t, kp.ns); got != want {
		t.Fatalf("after the repair the table differs from a fresh load:\n%s", lineDiff(got, want))
	}
	// Another table changing makes the next full Sync read the table back:
	// it finds it intact (the shortened comments resolved) and sends
	// nothing.
	repaired = nil
	if err := kp.ns.Nft(ctx, "add table inet someone-else"); err != nil {
		t.Fatal(err)
	}
	if err := second.Sync(ctx, d); err != nil {
		t.Fatal(err)
	}
	if second.runs != 1 || repaired != nil || !second.genOK {
		t.Errorf("a full Sync over an intact table ran nft %d times, reported %q:\n%s", second.runs-1, repaired, second.last)
	}
}

// portNamed is the name of the state's port printed as name.
func portNamed(t *testing.T, s *state, name string) model.ServicePortName {
	t.Helper()
	for n := range s.ports {
		if n.String() == name {
			return n
		}
	}
	t.Fatalf("no port %s", name)
	return model.ServicePortName{}
}
