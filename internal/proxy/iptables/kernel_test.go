package iptables

import (
	"context"
	"github.com/kdive/kdive/internal/xtables"
	"strings"
	"testing"

	"github.com/kdive/kdive/internal/kernel/ktest"
	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy"
)

// TestRestoreAccepted: the whole rendered text, with the hook inserts, is
// accepted by iptables-restore of both flavours.
func TestRestoreAccepted(t *testing.T) {
	for _, f := range xtables.Flavours {
		t.Run(string(f), func(t *testing.T) {
			t.Parallel()
			kp := newKernelProxier(t, f)
			rs := Render(fixture())
			if _, err := kp.ns.Run(context.Background(), rs.Text(), f.Restore(), "-w", "--noflush"); err != nil {
				t.Fatalf("restore rendered text: %v", err)
			}
			nat := chainsIn(t, kp.ns, f, TableNAT)
			for _, c := range rs.Chains() {
				if c.Table == TableNAT && !nat[c.Name] {
					t.Errorf("nat chain %s missing after restore", c.Name)
				}
			}
		})
	}
}

// TestSyncLifecycle: a full Sync, a no-op Sync that restores nothing, a
// one-endpoint change that restores only that port's chains, a removed
// port, and Cleanup, read back with iptables-save; a foreign rule and a
// foreign chain in the same tables survive all of it.
func TestSyncLifecycle(t *testing.T) {
	for _, f := range xtables.Flavours {
		t.Run(string(f), func(t *testing.T) {
			t.Parallel()
			testSyncLifecycle(t, f)
		})
	}
}

func testSyncLifecycle(t *testing.T, f Flavour) {
	ctx := context.Background()
	kp := newKernelProxier(t, f)
	foreign := "*nat\n:FOREIGN - [0:0]\n-A FOREIGN -s 192.0.2.1 -j RETURN\n-A PREROUTING -s 192.0.2.2 -j FOREIGN\nCOMMIT\n" +
		"*filter\n-A INPUT -s 192.0.2.3 -j ACCEPT\nCOMMIT\n"
	if _, err := kp.ns.Run(ctx, foreign, f.Restore(), "-w", "--noflush"); err != nil {
		t.Fatal(err)
	}
	d := fixture()
	if err := kp.Sync(ctx, d); err != nil {
		t.Fatalf("first sync: %v", err)
	}
	kp.sent()
	rs := kp.Ruleset()
	nat := iptables(t, kp.ns, f, "save", "-t", "nat")
	web := kp.r.names.port(port(d, "default/web:http").Name)
	for _, want := range []string{
		"-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
		"-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING",
		":" + web.svc, "-j " + web.ext, "--to-destination 10.0.3.2:8080", "-A FOREIGN -s 192.0.2.1/32 -j RETURN",
	} {
		if !strings.Contains(nat, want) {
			t.Errorf("nat after first sync lacks %q", want)
		}
	}
	if st := kp.Stats(); st.FullSyncs != 1 || !st.Last.Full || st.Last.Restores != 1 {
		t.Errorf("stats after first sync: %+v", st)
	}

	// Same input: nothing restored.
	if err := kp.Sync(ctx, unchanged(d)); err != nil {
		t.Fatalf("no-op sync: %v", err)
	}
	if s := kp.sent(); len(s) != 0 {
		t.Errorf("no-op sync restored:\n%s", strings.Join(s, "\n"))
	}
	if st := kp.Stats(); st.NoopSyncs != 1 || st.Last.Full {
		t.Errorf("stats after no-op sync: %+v", st)
	}
	// Also when the caller says a port changed but it did not.
	same := unchanged(d)
	same.Changed[port(d, "default/web:http").Name] = true
	if err := kp.Sync(ctx, same); err != nil {
		t.Fatal(err)
	}
	if s := kp.sent(); len(s) != 0 {
		t.Errorf("sync of an unchanged port restored:\n%s", strings.Join(s, "\n"))
	}

	// A full Sync over intact rules restores nothing: every rule, as
	// iptables-save prints it back, is what it should be.
	if err := kp.Sync(ctx, d); err != nil {
		t.Fatalf("full sync over intact rules: %v", err)
	}
	if s := kp.sent(); len(s) != 0 {
		t.Errorf("full sync over intact rules restored:\n%s", strings.Join(s, "\n"))
	}
	// Someone deletes a rule of ours: the next full Sync restores that
	// chain, and only it.
	sep := web.endpoint(netipAP("10.0.2.2:8080")).chain
	iptables(t, kp.ns, f, "", "-w", "-t", "nat", "-D", sep, "1")
	if err := kp.Sync(ctx, d); err != nil {
		t.Fatal(err)
	}
	if s := kp.sent(); len(s) != 1 || s[0] != "*nat\n:"+sep+" - [0:0]\n"+kp.Ruleset().Chain(TableNAT, sep).text()+"COMMIT\n" {
		t.Errorf("repairing %s sent:\n%s", sep, strings.Join(s, "\n---\n"))
	}

	// One endpoint replaced: only web:http's chains go out.
	old := web.endpoint(netipAP("10.0.3.2:8080")).chain
	eps := append([]model.Endpoint(nil), port(d, "default/web:http").Endpoints...)
	eps[2].IP = netipAP("10.0.3.22:8080").Addr()
	d2 := withEndpoints(d, "default/web:http", eps...)
	if err := kp.Sync(ctx, d2); err != nil {
		t.Fatalf("endpoint change: %v", err)
	}
	sent := kp.sent()
	if len(sent) != 1 {
		t.Fatalf("endpoint change ran %d restores, want 1", len(sent))
	}
	added := web.endpoint(netipAP("10.0.3.22:8080")).chain
	want := "*nat\n:" + web.svc + " - [0:0]\n:" + added + " - [0:0]\n:" + old + " - [0:0]\n"
	if !strings.HasPrefix(sent[0], want) || strings.Contains(sent[0], "KUBE-SERVICES") || strings.Contains(sent[0], "*filter") {
		t.Errorf("endpoint change sent:\n%s\nwant only %s, %s and the deletion of %s", sent[0], web.svc, added, old)
	}
	if !strings.Contains(sent[0], "-X "+old+"\n") {
		t.Errorf("endpoint change does not delete %s:\n%s", old, sent[0])
	}
	nat2 := chainsIn(t, kp.ns, f, TableNAT)
	if nat2[old] || !nat2[added] {
		t.Errorf("after endpoint change: %s present=%v (want gone), %s present=%v", old, nat2[old], added, nat2[added])
	}

	// A removed port: its chains go, KUBE-SERVICES is rewritten.
	dns := kp.r.names.port(port(d, "kube-system/kube-dns:dns").Name)
	d3 := without(d2, "kube-system/kube-dns:dns")
	if err := kp.Sync(ctx, d3); err != nil {
		t.Fatalf("removing a port: %v", err)
	}
	sent = kp.sent()
	if len(sent) != 1 || !strings.Contains(sent[0], ":KUBE-SERVICES") || !strings.Contains(sent[0], "-X "+dns.svc+"\n") {
		t.Errorf("removing a port sent:\n%s", strings.Join(sent, "\n---\n"))
	}
	nat3 := chainsIn(t, kp.ns, f, TableNAT)
	for _, c := range rs.Chains() {
		if c.Service != nil && c.Service.Name == "kube-dns" && c.Service.Port == "dns" && nat3[c.Name] {
			t.Errorf("chain %s of the removed port is still there", c.Name)
		}
	}
	if !nat3[web.svc] {
		t.Errorf("chain %s went away with another port", web.svc)
	}

	// Cleanup leaves no kdive chain or jump, and the foreign rules.
	if err := kp.Cleanup(ctx); err != nil {
		t.Fatalf("cleanup: %v", err)
	}
	all := iptables(t, kp.ns, f, "save")
	for _, line := range strings.Split(all, "\n") {
		if strings.Contains(line, "KUBE-") {
			t.Errorf("after cleanup: %s", line)
		}
	}
	for _, want := range []string{":FOREIGN", "-A FOREIGN -s 192.0.2.1/32 -j RETURN", "-A PREROUTING -s 192.0.2.2/32 -j FOREIGN", "-A INPUT -s 192.0.2.3/32 -j ACCEPT"} {
		if !strings.Contains(all, want) {
			t.Errorf("cleanup removed a foreign rule: %q", want)
		}
	}
	// And a new Sync after Cleanup starts over.
	if err := kp.Sync(ctx, d3); err != nil {
		t.Fatalf("sync after cleanup: %v", err)
	}
	if !chainsIn(t, kp.ns, f, TableNAT)[web.svc] {
		t.Errorf("sync after cleanup did not restore %s", web.svc)
	}
}

// TestCanary: someone flushes the nat table; the next Sync, although
// nothing changed, notices the missing canary and restores everything.
func TestCanary(t *testing.T) {
	for _, f := range xtables.Flavours {
		t.Run(string(f), func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			kp := newKernelProxier(t, f)
			d := fixture()
			if err := kp.Sync(ctx, d); err != nil {
				t.Fatal(err)
			}
			before := iptables(t, kp.ns, f, "save", "-t", "nat")
			iptables(t, kp.ns, f, "", "-w", "-t", "nat", "-F")
			if strings.Contains(iptables(t, kp.ns, f, "save", "-t", "nat"), "-A KUBE-") {
				t.Fatal("flush left rules")
			}
			if err := kp.Sync(ctx, unchanged(d)); err != nil {
				t.Fatal(err)
			}
			st := kp.Stats()
			if st.CanaryResyncs != 1 || !st.Last.CanaryLost || !st.Last.Full {
				t.Errorf("stats after the flush: %+v", st)
			}
			if after := iptables(t, kp.ns, f, "save", "-t", "nat"); stripCounters(after) != stripCounters(before) {
				t.Errorf("nat after resync:\n%s\nwant:\n%s", after, before)
			}
			// Chains deleted too (-F then -X), in filter this time.
			iptables(t, kp.ns, f, "", "-w", "-t", "filter", "-F")
			iptables(t, kp.ns, f, "", "-w", "-t", "filter", "-X")
			if err := kp.Sync(ctx, unchanged(d)); err != nil {
				t.Fatal(err)
			}
			if st := kp.Stats(); st.CanaryResyncs != 2 {
				t.Errorf("filter flush not noticed: %+v", st)
			}
			if !chainsIn(t, kp.ns, f, TableFilter)[chainExternalServices] {
				t.Error("filter chains not restored")
			}
		})
	}
}

// stripCounters drops the comment lines and chain counters of a save.
func stripCounters(s string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, "#") {
			continue
		}
		if strings.HasPrefix(l, ":") {
			l, _, _ = strings.Cut(l, " [")
		}
		out = append(out, l)
	}
	return strings.Join(out, "\n")
}

// TestDetectFlavourKernel: the flavour that holds rules wins; a fresh
// namespace gets nft; kubelet's hint chain decides over rule counts.
func TestDetectFlavourKernel(t *testing.T) {
	requireFlavour(t, FlavourNFT)
	requireFlavour(t, FlavourLegacy)
	ctx := context.Background()
	for _, c := range []struct {
		name  string
		setup map[Flavour]string
		want  Flavour
	}{
		{"fresh", nil, FlavourNFT},
		{"legacy rules", map[Flavour]string{FlavourLegacy: "*filter\n-A INPUT -s 192.0.2.1 -j ACCEPT\nCOMMIT\n"}, FlavourLegacy},
		{"nft rules", map[Flavour]string{FlavourNFT: "*filter\n-A INPUT -s 192.0.2.1 -j ACCEPT\nCOMMIT\n"}, FlavourNFT},
		{"kubelet hint beats rule count", map[Flavour]string{
			FlavourNFT:    "*mangle\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT\n",
			FlavourLegacy: "*filter\n-A INPUT -s 192.0.2.1 -j ACCEPT\n-A INPUT -s 192.0.2.2 -j ACCEPT\nCOMMIT\n",
		}, FlavourNFT},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			ns := ktest.NewNetNS(t)
			for f, in := range c.setup {
				if _, err := ns.Run(ctx, in, f.Restore(), "-w", "--noflush"); err != nil {
					t.Fatal(err)
				}
			}
			p := New(Options{NetNS: ns})
			if err := p.Sync(ctx, fixture()); err != nil {
				t.Fatal(err)
			}
			if got := p.Flavour(); got != c.want {
				t.Errorf("detected %s, want %s", got, c.want)
			}
			if !chainsIn(t, ns, c.want, TableNAT)[chainServices] {
				t.Errorf("rules not in %s", c.want)
			}
		})
	}
}

// TestBatchedSync: a write too large for one iptables-nft transaction
// goes as several, in several processes, and ends up whole.
func TestBatchedSync(t *testing.T) {
	ctx := context.Background()
	kp := newKernelProxier(t, FlavourNFT)
	d := scaleDesired(450, 10)
	if err := kp.Sync(ctx, d); err != nil {
		t.Fatal(err)
	}
	sent := kp.sent()
	if n := strings.Count(strings.Join(sent, ""), "*nat\n"); len(sent) < 2 || n < 10 {
		t.Errorf("%d restores with %d nat transactions, want a batched write", len(sent), n)
	}
	nat := chainsIn(t, kp.ns, FlavourNFT, TableNAT)
	for _, c := range kp.Ruleset().Chains() {
		if c.Table == TableNAT && !nat[c.Name] {
			t.Fatalf("chain %s missing", c.Name)
		}
	}
	services := 0
	for _, l := range strings.Split(iptables(t, kp.ns, FlavourNFT, "", "-w", "-t", "nat", "-S", chainServices), "\n") {
		if strings.Contains(l, "cluster IP") {
			services++
		}
	}
	if services != 450 {
		t.Errorf("KUBE-SERVICES has %d cluster IPs, want 450", services)
	}
	if err := kp.Sync(ctx, changeOne(d, 42)); err != nil {
		t.Fatal(err)
	}
	if s := kp.sent(); len(s) != 1 || len(s[0]) > 4000 {
		t.Errorf("one-endpoint change sent %d restores, %d bytes", len(s), len(strings.Join(s, "")))
	}
}

// TestFlavourSwitch: rules a legacy run left go when the node's flavour
// is nft now (both would hook the same places).
func TestFlavourSwitch(t *testing.T) {
	requireFlavour(t, FlavourLegacy)
	ctx := context.Background()
	kp := newKernelProxier(t, FlavourNFT)
	if err := New(Options{NetNS: kp.ns, Flavour: FlavourLegacy}).Sync(ctx, fixture()); err != nil {
		t.Fatal(err)
	}
	if err := kp.Sync(ctx, fixture()); err != nil {
		t.Fatal(err)
	}
	if legacy := iptables(t, kp.ns, FlavourLegacy, "save"); strings.Contains(legacy, "KUBE-") {
		t.Errorf("legacy rules left:\n%s", legacy)
	}
	if !chainsIn(t, kp.ns, FlavourNFT, TableNAT)[chainServices] {
		t.Error("nft rules missing")
	}
}

// TestResyncIntact: a full Sync over rules it programmed itself restores
// nothing, for rules the fixture lacks (no per-endpoint comments beyond
// 1,000 endpoints, the localnet guard), in both flavours.
func TestResyncIntact(t *testing.T) {
	for _, f := range xtables.Flavours {
		t.Run(string(f), func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			kp := newKernelProxier(t, f)
			d := scaleDesired(120, 10)
			d.Config.LocalhostNodePorts = true
			d.NodePortIPs = proxy.NodePortIPs(d.Config, d.Node)
			sp := d.Services[0].ServicePort
			sp.NodePort, sp.AffinityTimeout = 30001, 600
			d.Services[0] = proxy.Resolve(sp, d.Node)
			if err := kp.Sync(ctx, d); err != nil {
				t.Fatal(err)
			}
			kp.sent()
			if err := kp.Sync(ctx, d); err != nil {
				t.Fatal(err)
			}
			if s := kp.sent(); len(s) != 0 {
				t.Errorf("full sync over intact rules restored:\n%s", strings.Join(s, "\n"))
			}
		})
	}
}
