package nftables

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy"
	"github.com/kdive/kdive/internal/proxy/proxytest"
)

// inspectListing is `nft -j list table ip kdive-proxy` of the fixture as
// the kernel (nft 1.0.6, 6.18) listed it; TestInspectLB -update rewrites it.
const inspectListing = "testdata/inspect-fixture.json"

// syncedNS syncs d into a fresh namespace whose loopback holds the node's
// addresses (so `fib saddr type local` and NodePorts see them; test
// kernels may lack dummy links).
func syncedNS(t *testing.T, d *proxy.Desired) *kernel.NetNS {
	t.Helper()
	kp := newKernelProxier(t)
	for _, ip := range d.Node.IPs {
		if err := kp.ns.AddAddr("lo", netip.PrefixFrom(ip, 32)); err != nil {
			t.Fatal(err)
		}
	}
	mustSync(t, kp.Proxier, d)
	return kp.ns
}

func mustInspect(t *testing.T, ns *kernel.NetNS) proxy.Inspection {
	t.Helper()
	insp, err := Inspect(context.Background(), ns)
	if err != nil {
		t.Fatalf("Inspect: %v", err)
	}
	return insp
}

func nftIn(t *testing.T, ns *kernel.NetNS, args ...string) {
	t.Helper()
	if _, err := ns.Run(context.Background(), "", "nft", args...); err != nil {
		t.Fatal(err)
	}
}

func checkLB(t *testing.T, got *proxy.LBTable, d *proxy.Desired) {
	t.Helper()
	if diffs := proxy.CompareLB(got, proxy.ExpectedLB("nftables", d)); len(diffs) > 0 {
		t.Errorf("the table read back differs from ExpectedLB:\n%s", strings.Join(diffs, "\n"))
	}
}

func TestInspectLB(t *testing.T) {
	d := proxytest.Fixture()
	ns := syncedNS(t, d)
	lb := mustInspect(t, ns).LB()
	checkLB(t, lb, d)
	if lb.Mode != "nftables" || len(lb.Services) != len(d.Services) {
		t.Errorf("mode %q, %d services, want nftables, %d", lb.Mode, len(lb.Services), len(d.Services))
	}
	if len(lb.Cluster) != 1 || lb.Cluster[0] != d.Config.ClusterCIDRs[0] || lb.MasqueradeAll {
		t.Errorf("cluster CIDRs %v, masquerade all %v; want %v, false", lb.Cluster, lb.MasqueradeAll, d.Config.ClusterCIDRs)
	}
	web := lb.Service(model.ServicePortName{Namespace: "default", Name: "web", Port: "http", Protocol: model.ProtocolTCP})
	if web == nil || web.Counters != nil {
		t.Fatalf("default/web:http = %+v, want it, without counters (the table keeps none)", web)
	}
	if s, kind := lb.Lookup(model.ProtocolTCP, netip.MustParseAddrPort("172.20.1.10:30080")); s != web || kind != proxy.KindNodePort {
		t.Errorf("172.20.1.10:30080 is %v of %v, want a NodePort of default/web:http", kind, s)
	}
	if *update {
		out, err := ns.Run(context.Background(), "", "nft", "-j", "list", "table", Family, Table)
		var b bytes.Buffer
		if err == nil {
			err = json.Indent(&b, []byte(out), "", " ")
		}
		if err == nil {
			err = os.WriteFile(inspectListing, b.Bytes(), 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestInspectLBVariants reads back the other shapes Render has: no
// cluster CIDRs, MasqueradeAll, NodePorts on localhost, internal policy
// Local with a local endpoint, affinity under external policy Local.
func TestInspectLBVariants(t *testing.T) {
	s := stateOf(proxytest.Fixture())
	s.d.Config = proxy.Config{MasqueradeAll: true, LocalhostNodePorts: true}
	ip := netip.MustParseAddr
	eps := []model.Endpoint{
		{IP: ip("10.0.1.20"), Port: 8080, NodeName: "node-1", Ready: true, Serving: true},
		{IP: ip("10.0.2.20"), Port: 8080, NodeName: "node-2", Ready: true, Serving: true},
	}
	itp := model.ServicePort{Name: model.ServicePortName{Namespace: "x", Name: "itp", Protocol: model.ProtocolUDP},
		ClusterIPs: []netip.Addr{ip("10.1.1.1")}, Port: 53, Endpoints: eps, InternalPolicyLocal: true}
	sticky := model.ServicePort{Name: model.ServicePortName{Namespace: "x", Name: "sticky", Port: "p", Protocol: model.ProtocolTCP},
		ClusterIPs: []netip.Addr{ip("10.1.1.2")}, Port: 80, NodePort: 30100, Endpoints: eps,
		ExternalPolicyLocal: true, AffinityTimeout: 60}
	s.ports[itp.Name], s.ports[sticky.Name] = itp, sticky
	d := s.desired()
	insp := mustInspect(t, syncedNS(t, d))
	for _, c := range []string{"cluster-ip-local-1", "local-affinity-x/sticky/tcp/p", "affinity-x/sticky/tcp/p"} {
		if insp.(*inspection).Ruleset().Chains[c] == nil {
			t.Errorf("the kernel's table has no chain %s", c)
		}
	}
	lb := insp.LB()
	checkLB(t, lb, d)
	if len(lb.Cluster) != 0 || !lb.MasqueradeAll {
		t.Errorf("cluster CIDRs %v, masquerade all %v; want none, true", lb.Cluster, lb.MasqueradeAll)
	}
}

// TestInspectTraceCases runs the whole case table over the kernel's table.
func TestInspectTraceCases(t *testing.T) {
	fixture := proxytest.Fixture()
	// Namespaces live as long as this test; the tracer runs in subtests.
	inspections := map[string]proxy.Inspection{
		Render(fixture).String(): mustInspect(t, syncedNS(t, fixture)),
	}
	proxytest.Run(t, func(t *testing.T, d *proxy.Desired, p proxytest.Packet) proxytest.Result {
		insp := inspections[Render(d).String()]
		if insp == nil {
			t.Fatal("no namespace synced for this desired state")
		}
		return insp.Trace(p)
	})
}

func TestInspectExplain(t *testing.T) {
	insp := mustInspect(t, syncedNS(t, proxytest.Fixture()))
	p := proxytest.Packet{Src: proxytest.LocalPod, Proto: model.ProtocolTCP, Dst: netip.MustParseAddr("10.1.0.2"), Port: 80}
	lines := insp.Explain(p)
	text := strings.Join(lines, "\n")
	t.Logf("explain %s:\n%s", p, text)
	for _, want := range []string{
		"hook prerouting: chain nat-prerouting",
		`element 10.1.0.2 . tcp . 80 comment "default/web:http" : goto cluster-ip-3`,
		"chain cluster-ip-masquerade: no rule matches",
		"bucket 0 of 3: element 10.1.0.2 . tcp . 80 . 0 : 10.0.1.2 . 8080",
		"DNAT to 10.0.1.2:8080 (1 of 3 picks); hook postrouting: nat-postrouting -> masquerading: source address kept",
		"DNAT to 10.0.2.2:8080 (1 of 3 picks)",
		"DNAT to 10.0.3.2:8080 (1 of 3 picks)",
		"result for service default/web:http (TCP): DNAT 10.0.1.2:8080 10.0.2.2:8080 10.0.3.2:8080",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("explanation lacks %q", want)
		}
	}

	// From the node to a NodePort: the output hook, masqueraded.
	p = proxytest.Packet{Src: proxytest.NodeIP, Proto: model.ProtocolTCP, Dst: proxytest.NodeIP, Port: 30080, FromNode: true}
	text = strings.Join(insp.Explain(p), "\n")
	for _, want := range []string{"hook output: chain nat-output", "goto external-3", "chain mark-for-masquerade: meta mark set", "masqueraded"} {
		if !strings.Contains(text, want) {
			t.Errorf("explanation of %s lacks %q:\n%s", p, want, text)
		}
	}
	// Session affinity: each endpoint chain, picked by numgen.
	p = proxytest.Packet{Src: proxytest.LocalPod, Proto: model.ProtocolTCP, Dst: netip.MustParseAddr("10.1.0.7"), Port: 80}
	text = strings.Join(insp.Explain(p), "\n")
	for _, want := range []string{"numgen 1: goto endpoint-default/affinity/tcp/80__10.0.3.7/8080", "dnat to 10.0.3.7:8080", "update @affinity-default/affinity/tcp/80__10.0.2.7/8080"} {
		if !strings.Contains(text, want) {
			t.Errorf("explanation of %s lacks %q:\n%s", p, want, text)
		}
	}
}

// TestInspectSeesKernelEdits: what Inspect reports is the kernel's table,
// edits by hand included.
func TestInspectSeesKernelEdits(t *testing.T) {
	d := proxytest.Fixture()
	ns := syncedNS(t, d)
	ctx := context.Background()
	web := proxytest.Packet{Src: proxytest.LocalPod, Proto: model.ProtocolTCP, Dst: netip.MustParseAddr("10.1.0.2"), Port: 80}

	// One bucket of the cluster IP gone: a third of new connections fall
	// through unbalanced.
	nftIn(t, ns, "delete", "element", Family, Table, "endpoints-3", "{ 10.1.0.2 . tcp . 80 . 1 }")
	insp := mustInspect(t, ns)
	diffs := proxy.CompareLB(insp.LB(), proxy.ExpectedLB("nftables", d))
	if len(diffs) != 1 || !strings.HasPrefix(diffs[0], "default/web:http/TCP: internal endpoints [10.0.1.2:8080=0.333 10.0.3.2:8080=0.333]") {
		t.Errorf("after deleting a bucket CompareLB = %q, want the internal endpoints of default/web:http", diffs)
	}
	if got := insp.Trace(web); !strings.HasPrefix(string(got.Verdict), "MIXED") {
		t.Errorf("trace with a missing bucket = %s, want MIXED", got)
	}
	if text := strings.Join(insp.Explain(web), "\n"); !strings.Contains(text, "bucket 1 of 3: no element 10.1.0.2 . tcp . 80 . 1") {
		t.Errorf("explanation does not show the missing bucket:\n%s", text)
	}

	// An external IP's element gone.
	nftIn(t, ns, "delete", "element", Family, Table, setServiceIPs, "{ 203.0.113.10 . tcp . 80 }")
	diffs = proxy.CompareLB(mustInspect(t, ns).LB(), proxy.ExpectedLB("nftables", d))
	if len(diffs) != 2 || !strings.Contains(diffs[0], "addresses [{ClusterIP 10.1.0.2:80} {NodePort 172.20.1.10:30080}], want") {
		t.Errorf("after deleting an external IP CompareLB = %q, want the addresses (and the bucket) of default/web:http", diffs)
	}

	// A rule of a shape kdive writes, put there by hand, is traced.
	nftIn(t, ns, "insert", "rule", Family, Table, chainServices, "ip", "saddr", proxytest.LocalPod.String(), "drop")
	if got := mustInspect(t, ns).Trace(web); got.Verdict != proxy.DROP {
		t.Errorf("trace after a drop rule for the source = %s, want DROP", got)
	}

	// A rule of a shape kdive never writes is reported, not explained.
	nftIn(t, ns, "add", "rule", Family, Table, chainServices, "tcp", "dport", "22", "accept")
	_, err := Inspect(ctx, ns)
	var ue *UnknownRuleError
	if !errors.As(err, &ue) || !errors.Is(err, ErrUnknownShape) || ue.Chain != chainServices || ue.Text != "tcp dport 22 accept" {
		t.Fatalf("Inspect of a table with a foreign rule = %v, want an UnknownRuleError for chain services", err)
	}
	t.Log(err)

	nftIn(t, ns, "delete", "table", Family, Table)
	if _, err := Inspect(ctx, ns); !errors.Is(err, kernel.ErrNotFound) {
		t.Errorf("Inspect without the table = %v, want ErrNotFound", err)
	}
}

// TestInspectParseListing parses a listing captured from the kernel: it
// must read back as the very ruleset Render made (same nft text), and
// answer the case table and ExpectedLB without a kernel.
func TestInspectParseListing(t *testing.T) {
	data, err := os.ReadFile(inspectListing)
	if err != nil {
		t.Fatal(err)
	}
	l, err := parseListing(data)
	if err != nil {
		t.Fatal(err)
	}
	d := proxytest.Fixture()
	if got, want := l.rs.String(), Render(d).String(); got != want {
		t.Fatalf("listing parsed into a different ruleset (re-capture with -update if Render changed):\n%s", lineDiff(got, want))
	}
	l.rs.LocalIPs = []netip.Addr{netip.MustParseAddr("127.0.0.1"), proxytest.NodeIP}
	insp := &inspection{l}
	checkLB(t, insp.LB(), d)
	proxytest.Run(t, func(t *testing.T, _ *proxy.Desired, p proxytest.Packet) proxytest.Result { return insp.Trace(p) })
}

func TestInspectParseErrors(t *testing.T) {
	const head = `{"nftables": [{"table": {"family": "ip", "name": "kdive-proxy"}},
		{"chain": {"family": "ip", "table": "kdive-proxy", "name": "services"}},`
	for _, c := range []struct{ name, objs, want string }{
		{"foreign rule", `{"rule": {"family": "ip", "table": "kdive-proxy", "chain": "services", "handle": 7, "expr": [
			{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 22}}, {"accept": null}]}}`,
			`chain services rule handle 7: not a shape kdive writes: match {"left":{"payload":{"field":"dport","protocol":"tcp"}},"op":"==","right":22}`},
		{"two statements", `{"rule": {"family": "ip", "table": "kdive-proxy", "chain": "services", "handle": 8, "expr": [
			{"counter": {"packets": 1, "bytes": 60}}, {"accept": null}]}}`,
			`chain services rule handle 8: not a shape kdive writes: statement {"counter":{"bytes":60,"packets":1}} is not the rule's last expression`},
		{"masquerade without fully-random", `{"rule": {"family": "ip", "table": "kdive-proxy", "chain": "services", "handle": 9, "expr": [{"masquerade": null}]}}`,
			`chain services rule handle 9: not a shape kdive writes: statement {"masquerade":null}`},
		{"set of another type", `{"set": {"family": "ip", "table": "kdive-proxy", "name": "ports", "type": "inet_service"}}`,
			`set ports: not a shape kdive writes`},
		{"element without a comment", `{"map": {"family": "ip", "table": "kdive-proxy", "name": "service-ips", "type": ["ipv4_addr", "inet_proto", "inet_service"], "map": "verdict",
			"elem": [[{"concat": ["10.1.0.2", "tcp", 80]}, {"drop": null}]]}}`,
			`comment "" does not name a service port`},
		{"base chain dropping", `{"chain": {"family": "ip", "table": "kdive-proxy", "name": "in", "type": "filter", "hook": "input", "prio": 0, "policy": "drop"}}`,
			`chain in: not a shape kdive writes`},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := parseListing([]byte(head + c.objs + "]}"))
			if err == nil || !strings.Contains(err.Error(), c.want) || !errors.Is(err, ErrUnknownShape) {
				t.Errorf("parse = %v, want an error with %q", err, c.want)
			}
		})
	}
}

// TestInspectCounters: element counters of service-ips (a map declared
// with `counter`) are the service port's counters.
func TestInspectCounters(t *testing.T) {
	listing := `{"nftables": [{"table": {"family": "ip", "name": "kdive-proxy"}},
		{"chain": {"family": "ip", "table": "kdive-proxy", "name": "reject-chain"}},
		{"map": {"family": "ip", "table": "kdive-proxy", "name": "service-ips", "type": ["ipv4_addr", "inet_proto", "inet_service"], "map": "verdict",
			"stmt": [{"counter": null}], "elem": [
			[{"elem": {"val": {"concat": ["10.1.0.3", "tcp", 80]}, "comment": "default/empty", "counter": {"packets": 3, "bytes": 180}}}, {"goto": {"target": "reject-chain"}}],
			[{"elem": {"val": {"concat": ["172.20.1.10", "tcp", 30081]}, "comment": "default/empty", "counter": {"packets": 2, "bytes": 120}}}, {"goto": {"target": "reject-chain"}}]]}}]}`
	l, err := parseListing([]byte(listing))
	if err != nil {
		t.Fatal(err)
	}
	l.rs.LocalIPs = []netip.Addr{proxytest.NodeIP}
	lb := (&inspection{l}).LB()
	if len(lb.Services) != 1 {
		t.Fatalf("services %+v, want default/empty", lb.Services)
	}
	s := lb.Services[0]
	if s.Counters == nil || *s.Counters != (proxy.Counters{Packets: 5, Bytes: 300}) {
		t.Errorf("counters %+v, want 5 packets, 300 bytes", s.Counters)
	}
	want := []proxy.LBAddress{
		{Kind: proxy.KindClusterIP, Addr: netip.MustParseAddrPort("10.1.0.3:80")},
		{Kind: proxy.KindNodePort, Addr: netip.MustParseAddrPort("172.20.1.10:30081")},
	}
	if len(s.Addresses) != 2 || s.Addresses[0] != want[0] || s.Addresses[1] != want[1] {
		t.Errorf("addresses %v, want %v", s.Addresses, want)
	}
}
