package ipvs_test

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/ktest"
	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy/ipvs"
	"github.com/kdive/kdive/internal/proxy/proxytest/bed"
)

// kernelState is what the node holds, read back.
type kernelState struct {
	vs    map[string][]kernel.RealServer // "TCP 10.1.0.2:80" -> real servers
	addrs []netip.Prefix                 // on kube-ipvs0
	sets  map[string][]string            // the mode's ipsets
	rules map[string]string              // iptables-save per flavour
}

func readState(t *testing.T, ns *kernel.NetNS) kernelState {
	t.Helper()
	st := kernelState{vs: map[string][]kernel.RealServer{}, sets: map[string][]string{}, rules: map[string]string{}}
	h, err := ns.OpenIPVS()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	vss, err := h.VirtualServers()
	if err != nil {
		t.Fatal(err)
	}
	for _, vs := range vss {
		rs, err := h.RealServers(vs)
		if err != nil {
			t.Fatal(err)
		}
		slices.SortFunc(rs, func(a, b kernel.RealServer) int { return a.Address.Compare(b.Address) })
		st.vs[vs.String()] = rs
	}
	if l, err := ns.LinkByName("kube-ipvs0"); err == nil {
		st.addrs = l.Addrs
	}
	sets, err := ns.OpenIPSets()
	if err != nil {
		t.Fatal(err)
	}
	defer sets.Close()
	all, err := sets.ListAll()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range all {
		var es []string
		for _, e := range s.Entries {
			es = append(es, e.String())
		}
		slices.Sort(es)
		st.sets[s.Name] = es
	}
	return st
}

// readRules adds iptables-save's output for both back ends.
func (s kernelState) readRules(t *testing.T, ns *kernel.NetNS) kernelState {
	t.Helper()
	for _, f := range []string{"iptables-nft-save", "iptables-legacy-save"} {
		out, err := ns.Run(t.Context(), "", f)
		if err != nil {
			t.Fatal(err)
		}
		s.rules[f] = out
	}
	return s
}

// weights reads one virtual server's real servers and their weights.
func weights(t *testing.T, ns *kernel.NetNS, vs string) map[string]int {
	t.Helper()
	h, err := ns.OpenIPVS()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	vss, err := h.VirtualServers()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, v := range vss {
		if v.String() != vs {
			continue
		}
		rss, err := h.RealServers(v)
		if err != nil {
			t.Fatal(err)
		}
		for _, rs := range rss {
			out[rs.Address.String()] = rs.Weight
		}
	}
	return out
}

func (s kernelState) weights(vs string) map[string]int {
	out := map[string]int{}
	for _, rs := range s.vs[vs] {
		out[rs.Address.String()] = rs.Weight
	}
	return out
}

// TestIPVSSyncLifecycle syncs a small snapshot and reads the kernel back;
// syncs it again (nothing changes), from a new Proxier too (a restarted
// agent adopts the state); removes an endpoint with a connection open (it
// drains at weight 0) and one without (deleted at once); removes a
// service; and cleans up.
func TestIPVSSyncLifecycle(t *testing.T) {
	b := newBed(t)
	ctx := t.Context()
	web := svc("web", "10.1.0.2", ep(podA, "node-1"), ep(podB, "node-1"))
	web.NodePort = 30080
	other := svc("other", "10.1.0.3", ep(podA, "node-1"), ep(podC, "node-1"))
	p := ipvs.New(ipvs.Options{NetNS: b.Node, DrainTimeout: 30 * time.Second})
	if err := p.Sync(ctx, desired(web, other)); err != nil {
		t.Fatal(err)
	}
	st := readState(t, b.Node).readRules(t, b.Node)
	if out, err := b.Node.Run(ctx, "", "ipvsadm", "-Ln"); err == nil {
		t.Logf("ipvsadm -Ln:\n%s", out)
	}
	wantVS := map[string]map[string]int{
		"TCP 10.1.0.2:80":       {"10.0.1.2:8080": 1, "10.0.1.3:8080": 1},
		"TCP 172.20.1.10:30080": {"10.0.1.2:8080": 1, "10.0.1.3:8080": 1},
		"TCP 10.1.0.3:80":       {"10.0.1.2:8080": 1, "10.0.1.4:8080": 1},
	}
	if len(st.vs) != len(wantVS) {
		t.Errorf("virtual servers: %v", st.vs)
	}
	for vs, w := range wantVS {
		if got := st.weights(vs); !mapsEqual(got, w) {
			t.Errorf("%s has real servers %v, want %v", vs, got, w)
		}
	}
	wantAddrs := []netip.Prefix{netip.MustParsePrefix("10.1.0.2/32"), netip.MustParsePrefix("10.1.0.3/32")}
	if !slices.Equal(sortedPrefixes(st.addrs), wantAddrs) {
		t.Errorf("kube-ipvs0 holds %v, want %v", st.addrs, wantAddrs)
	}
	if got := st.sets["KUBE-CLUSTER-IP"]; !slices.Equal(got, []string{"10.1.0.2,tcp:80", "10.1.0.3,tcp:80"}) {
		t.Errorf("KUBE-CLUSTER-IP holds %v", got)
	}
	if got := st.sets["KUBE-NODE-PORT-TCP"]; !slices.Equal(got, []string{"30080"}) {
		t.Errorf("KUBE-NODE-PORT-TCP holds %v", got)
	}
	nft := st.rules["iptables-nft-save"]
	for _, want := range []string{"-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
		"-A KUBE-SERVICES ! -s 10.0.0.0/16", "-j SET --map-set KUBE-SHORT-CIRCUIT dst,dst --map-mark"} {
		if !strings.Contains(nft, want) {
			t.Errorf("iptables-nft-save lacks %q:\n%s", want, nft)
		}
	}
	if strings.Contains(st.rules["iptables-legacy-save"], "KUBE-") {
		t.Errorf("rules went to iptables-legacy too:\n%s", st.rules["iptables-legacy-save"])
	}

	// Again, and from a new Proxier: nothing changes.
	for i, px := range []*ipvs.Proxier{p, ipvs.New(ipvs.Options{NetNS: b.Node})} {
		if err := px.Sync(ctx, desired(web, other)); err != nil {
			t.Fatal(err)
		}
		if s := px.LastSync(); s.Changed() {
			t.Errorf("sync #%d of the same snapshot changed %+v", i+2, s)
		}
	}

	// A new node-wide scheduler updates the virtual servers in place.
	long := connectTo(t, b, "10.1.0.2:80", podB)
	defer long.Close()
	wlc := ipvs.New(ipvs.Options{NetNS: b.Node, Scheduler: "wlc", Flavour: "nft"})
	if err := wlc.Sync(ctx, desired(web, other)); err != nil {
		t.Fatal(err)
	}
	if s := wlc.LastSync(); s.VirtualServersUpdated != 3 || s.VirtualServersAdded+s.RealServersAdded+s.RealServersDeleted != 0 {
		t.Errorf("switching to wlc: %+v, want 3 virtual servers updated and nothing else", s)
	}
	if err := p.Sync(ctx, desired(web, other)); err != nil {
		t.Fatal(err)
	}

	// pod-b leaves web while a connection to it is open: weight 0, the
	// connection lives on; pod-c leaves other with none: deleted at once.
	// Only those two services are named as changed.
	web.Endpoints = web.Endpoints[:1]
	other.Endpoints = other.Endpoints[:1]
	d := desired(web, other)
	d.Changed = map[model.ServicePortName]bool{web.Name: true, other.Name: true}
	if err := p.Sync(ctx, d); err != nil {
		t.Fatal(err)
	}
	st = readState(t, b.Node)
	if got := st.weights("TCP 10.1.0.2:80"); !mapsEqual(got, map[string]int{"10.0.1.2:8080": 1, "10.0.1.3:8080": 0}) {
		t.Errorf("after pod-b left web: %v, want pod-b draining at weight 0", got)
	}
	if got := st.weights("TCP 10.1.0.3:80"); !mapsEqual(got, map[string]int{"10.0.1.2:8080": 1}) {
		t.Errorf("after pod-c left other: %v, want it deleted (no connections)", got)
	}
	if s := p.LastSync(); s.RealServersDraining != 1 {
		t.Errorf("stats %+v, want one real server draining", s)
	}
	if a, err := long.Ask(within); err != nil || a.Endpoint.Addr().String() != podB {
		t.Errorf("the open connection to pod-b after it left: %s, %v", a, err)
	}

	// other goes: its virtual server and address too.
	if err := p.Sync(ctx, desired(web)); err != nil {
		t.Fatal(err)
	}
	st = readState(t, b.Node)
	if _, ok := st.vs["TCP 10.1.0.3:80"]; ok || slices.Contains(st.addrs, netip.MustParsePrefix("10.1.0.3/32")) {
		t.Errorf("service other left: virtual servers %v, kube-ipvs0 %v", st.vs, st.addrs)
	}
	if got := st.sets["KUBE-CLUSTER-IP"]; !slices.Equal(got, []string{"10.1.0.2,tcp:80"}) {
		t.Errorf("KUBE-CLUSTER-IP holds %v", got)
	}

	checkCleanup(t, p, b.Node)
}

// TestIPVSCleanupBothFlavours leaves rules in iptables-nft and
// iptables-legacy (two agents of different flavours) next to an
// iptables-mode chain of the same name, and cleans up.
func TestIPVSCleanupBothFlavours(t *testing.T) {
	ktest.RequireFeature(t, kernel.FeatureIPVS)
	ktest.RequireFeature(t, kernel.FeatureDummy)
	node := ktest.NewNetNS(t) // no pods: no traffic here
	ctx := t.Context()
	if _, err := node.EnsureDummy("eth0", kernel.LinkAttrs{}); err != nil {
		t.Fatal(err)
	}
	if err := node.AddAddr("eth0", netip.PrefixFrom(nodeIP, 24)); err != nil {
		t.Fatal(err)
	}
	// An iptables-mode KUBE-SERVICES in legacy's filter table must stay;
	// so does KUBE-FORWARD there, which both modes write alike: with the
	// iptables mode present, it is that mode's.
	if _, err := node.Run(ctx, "*filter\n:KUBE-SERVICES - [0:0]\n:KUBE-EXTERNAL-SERVICES - [0:0]\n-A KUBE-SERVICES -d 10.9.9.9/32 -j REJECT\nCOMMIT\n",
		"iptables-legacy-restore", "--noflush"); err != nil {
		t.Fatal(err)
	}
	// An eTP Local NodePort brings a firewall-mark virtual server.
	local := svc("local", "10.1.0.4", ep(podA, "node-2"))
	local.NodePort, local.ExternalPolicyLocal = 30082, true
	d := desired(svc("web", "10.1.0.2", ep(podA, "node-1")), local)
	for _, f := range []string{"legacy", "nft"} {
		if err := ipvs.New(ipvs.Options{NetNS: node, Flavour: f}).Sync(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	st := readState(t, node).readRules(t, node)
	if len(st.vs) != 4 || st.vs["FWM 0"] != nil {
		t.Errorf("virtual servers %v, want 4 (a firewall-mark one among them)", st.vs)
	}
	for _, f := range []string{"iptables-nft-save", "iptables-legacy-save"} {
		if !strings.Contains(st.rules[f], ":KUBE-IPVS-FIREWALL") {
			t.Fatalf("%s has no rules of the mode:\n%s", f, st.rules[f])
		}
	}
	cleaner := ipvs.New(ipvs.Options{NetNS: node})
	checkCleanup(t, cleaner, node, "iptables-legacy-save KUBE-FORWARD")
	if err := cleaner.Cleanup(ctx); err != nil {
		t.Errorf("cleanup again: %v", err)
	}
	st = readState(t, node).readRules(t, node)
	if !strings.Contains(st.rules["iptables-legacy-save"], "-A KUBE-SERVICES -d 10.9.9.9/32 -j REJECT") {
		t.Errorf("cleanup removed the iptables mode's chain:\n%s", st.rules["iptables-legacy-save"])
	}
}

// checkCleanup cleans up and checks nothing of the mode is left, but for
// the "<save command> <chain>" allowed.
func checkCleanup(t *testing.T, p *ipvs.Proxier, ns *kernel.NetNS, allowed ...string) {
	t.Helper()
	if err := p.Cleanup(t.Context()); err != nil {
		t.Fatal(err)
	}
	st := readState(t, ns).readRules(t, ns)
	if len(st.vs) != 0 || st.addrs != nil || len(st.sets) != 0 {
		t.Errorf("after cleanup: virtual servers %v, kube-ipvs0 %v, sets %v", st.vs, st.addrs, st.sets)
	}
	if _, err := ns.LinkByName("kube-ipvs0"); !errors.Is(err, kernel.ErrNotFound) {
		t.Errorf("kube-ipvs0 after cleanup: %v", err)
	}
	for f, out := range st.rules {
		for _, c := range []string{"KUBE-IPVS-FIREWALL", "KUBE-NODE-PORT", "KUBE-POSTROUTING", "KUBE-MARK-MASQ", "KUBE-FORWARD", "KUBE-LOOP-BACK"} {
			if strings.Contains(out, c) && !slices.Contains(allowed, f+" "+c) {
				t.Errorf("%s still shows %s after cleanup:\n%s", f, c, out)
			}
		}
	}
}

// connectTo dials addr from the client pod until the endpoint pod
// answers, and returns that open connection.
func connectTo(t *testing.T, b *bed.Bed, addr, pod string) *bed.Conn {
	t.Helper()
	for range 20 {
		c, err := bed.Dial(b.NS(client), client, "tcp", addr, within)
		if err != nil {
			t.Fatal(err)
		}
		a, err := c.Ask(within)
		if err != nil {
			c.Close()
			t.Fatal(err)
		}
		if a.Endpoint.Addr().String() == pod {
			return c
		}
		c.Close()
	}
	t.Fatalf("%s never answered on %s", pod, addr)
	return nil
}

func mapsEqual(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func sortedPrefixes(ps []netip.Prefix) []netip.Prefix {
	out := slices.Clone(ps)
	slices.SortFunc(out, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	return out
}
