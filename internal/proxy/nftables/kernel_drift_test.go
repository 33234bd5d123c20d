package nftables

import (
	"context"
	"strings"
	"testing"

	"github.com/kdive/kdive/internal/kernel/ktest"
	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy/proxytest"
)

// TestKernelRepairsDrift: someone else changes the table between Syncs. A
// Sync told what changed (Desired.Changed) trusts its memory and sends
// nothing; a full one (Changed nil, the agent's periodic resync) reads the
// table back, puts back what differs with one transaction (the difference
// when the table is still there, a replace when it is gone), reports what
// it repaired, and leaves the table as a fresh load of the same state.
func TestKernelRepairsDrift(t *testing.T) {
	kp := newKernelProxier(t)
	var repaired [][]string
	kp.opts.OnRepair = func(objs []string) { repaired = append(repaired, objs) }
	ctx := context.Background()
	d := proxytest.Fixture()
	if err := kp.Sync(ctx, d); err != nil {
		t.Fatal(err)
	}
	want := freshList(t, ktest.NewNetNS(t), Render(d))
	nft := func(t *testing.T, script string) {
		t.Helper()
		if err := kp.ns.Nft(ctx, script); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		name    string
		tamper  string
		replace bool   // the repair replaces the table
		object  string // one of the objects reported
	}{
		{name: "table flushed", tamper: "flush table ip kdive-proxy", replace: true, object: "rules of chain services"},
		{name: "element deleted", tamper: "delete element ip kdive-proxy service-ips { 10.1.0.2 . tcp . 80 }",
			object: "element service-ips { 10.1.0.2 . tcp . 80 }"},
		{name: "element changed", tamper: "delete element ip kdive-proxy service-ips { 10.1.0.2 . tcp . 80 }\n" +
			"add element ip kdive-proxy service-ips { 10.1.0.2 . tcp . 80 comment \"default/web:http\" : drop }",
			object: "element service-ips { 10.1.0.2 . tcp . 80 }"},
		{name: "endpoint element added", tamper: "add element ip kdive-proxy endpoints-3 { 10.1.0.99 . tcp . 80 . 0 : 10.0.9.9 . 80 }",
			object: "element endpoints-3 { 10.1.0.99 . tcp . 80 . 0 }"},
		{name: "rule added", tamper: "insert rule ip kdive-proxy services drop", replace: true, object: "rules of chain services"},
		{name: "chain deleted", tamper: "delete chain ip kdive-proxy nat-output", replace: true, object: "chain nat-output"},
		{name: "table deleted", tamper: "delete table ip kdive-proxy", replace: true, object: "table ip kdive-proxy"},
	} {
		t.Run(c.name, func(t *testing.T) {
			repaired = nil
			runs := kp.runs
			nft(t, c.tamper)
			tampered := listTable(t, kp.ns)
			if tampered == want {
				t.Fatal("the tampering changed nothing")
			}
			// A partial Sync does not look.
			if err := kp.Sync(ctx, stateOf(d).desired(d.Services[0].Name)); err != nil {
				t.Fatal(err)
			}
			if got := listTable(t, kp.ns); got != tampered || kp.runs != runs || repaired != nil {
				t.Fatalf("a partial Sync touched the table (%d nft runs, repaired %v)", kp.runs-runs, repaired)
			}
			if err := kp.Sync(ctx, d); err != nil {
				t.Fatalf("full Sync: %v\nscript:\n%s", err, kp.last)
			}
			if got := listTable(t, kp.ns); got != want {
				t.Fatalf("after the full Sync the table differs from a fresh load:\n%s", lineDiff(got, want))
			}
			if kp.runs != runs+1 {
				t.Errorf("the repair took %d nft runs, want 1", kp.runs-runs)
			}
			if isReplace := strings.HasPrefix(kp.last, "add table"); isReplace != c.replace {
				t.Errorf("the repair replaced the table: %v, want %v:\n%s", isReplace, c.replace, kp.last)
			}
			if len(repaired) != 1 || !containsString(repaired[0], c.object) {
				t.Errorf("repairs reported %q, want one report naming %q", repaired, c.object)
			}
			t.Logf("repaired %d objects: %.200q", len(repaired[0]), repaired[0])
			// Nothing left to repair: the next full Sync sends nothing.
			repaired = nil
			if err := kp.Sync(ctx, d); err != nil {
				t.Fatal(err)
			}
			if kp.runs != runs+1 || repaired != nil {
				t.Errorf("a full Sync over an intact table ran nft %d times, reported %q", kp.runs-runs-1, repaired)
			}
			// ... and the next need not read the table back: no nftables
			// transaction happened since.
			if g, err := kp.conn.Generation(); err != nil || !kp.genOK || kp.gen != g {
				t.Errorf("the table is not known intact at generation %d (%v): genOK %v gen %d", g, err, kp.genOK, kp.gen)
			}
		})
	}

	// A change to another table is no drift: the next full Sync reads the
	// table back, finds it intact, and sends nothing.
	repaired = nil
	runs := kp.runs
	nft(t, "add table inet someone-else")
	if err := kp.Sync(ctx, d); err != nil {
		t.Fatal(err)
	}
	if kp.runs != runs || repaired != nil || !kp.genOK {
		t.Errorf("after another table changed, a full Sync ran nft %d times, reported %q, genOK %v", kp.runs-runs, repaired, kp.genOK)
	}
}

// TestKernelGenerationCountsTransactions: one Sync's transaction is one
// nftables generation, a replace included (what the drift check relies
// on), and a partial Sync keeps the table known.
func TestKernelGenerationCountsTransactions(t *testing.T) {
	kp := newKernelProxier(t)
	ctx := context.Background()
	s := stateOf(proxytest.Fixture())
	step := func(what string, d func() error, wantReplace bool) {
		t.Helper()
		g0, err := kp.conn.Generation()
		if err != nil {
			t.Fatal(err)
		}
		if err := d(); err != nil {
			t.Fatal(err)
		}
		g1, _ := kp.conn.Generation()
		if g1 != g0+1 || !kp.genOK || kp.gen != g1 {
			t.Errorf("%s: generation %d -> %d, genOK %v at %d; want one transaction, known", what, g0, g1, kp.genOK, kp.gen)
		}
		if isReplace := strings.HasPrefix(kp.last, "add table"); isReplace != wantReplace {
			t.Errorf("%s: replace %v, want %v", what, isReplace, wantReplace)
		}
	}
	step("first Sync", func() error { return kp.Sync(ctx, s.desired()) }, true)
	n := s.edit(t, "default/web:http", func(sp *model.ServicePort) { sp.Endpoints = sp.Endpoints[:1] })
	step("partial Sync", func() error { return kp.Sync(ctx, s.desired(n)) }, false)
}

func containsString(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}
