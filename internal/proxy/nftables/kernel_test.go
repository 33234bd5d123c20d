package nftables

import (
	"context"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/ktest"
	"github.com/kdive/kdive/internal/kernel/nft"
	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy"
	"github.com/kdive/kdive/internal/proxy/proxytest"
)

// Real-kernel tests: each runs in namespaces it creates (ktest.NewNetNS),
// as root; they skip otherwise.

// kernelProxier is a Proxier on a fresh namespace that counts its nft
// runs and keeps the last script; tamper, when set, edits the next
// transaction.
type kernelProxier struct {
	*Proxier
	ns     *kernel.NetNS
	runs   int
	last   string
	tamper func(*nft.Transaction)
}

func newKernelProxier(t *testing.T) *kernelProxier {
	t.Helper()
	ktest.RequireFeature(t, kernel.FeatureNFTables)
	ns := ktest.NewNetNS(t)
	kp := &kernelProxier{Proxier: New(Options{NetNS: ns}), ns: ns}
	t.Cleanup(func() { kp.Close() })
	kp.run = func(ctx context.Context, tx *nft.Transaction) error {
		script := tx.String()
		kp.runs++
		if kp.tamper != nil {
			kp.tamper(tx)
			kp.tamper, script = nil, tx.String()
		}
		kp.last = script
		return kp.apply(ctx, tx)
	}
	return kp
}

// listTable is `nft list table` with the elements of each set sorted (the
// kernel lists them in hash order), or "" when there is no table.
func listTable(t *testing.T, ns *kernel.NetNS) string {
	t.Helper()
	out, err := ns.Run(context.Background(), "", "nft", "list", "table", Family, Table)
	if err != nil {
		if strings.Contains(err.Error(), "No such file or directory") {
			return ""
		}
		t.Fatalf("nft list table: %v", err)
	}
	out = elementsBlock.ReplaceAllStringFunc(out, func(block string) string {
		inner := strings.TrimSuffix(strings.TrimPrefix(block, "elements = {"), "}")
		var items []string
		for _, it := range strings.Split(inner, ",") {
			items = append(items, strings.TrimSpace(it))
		}
		slices.Sort(items)
		return "elements = { " + strings.Join(items, ", ") + " }"
	})
	// The kernel lists objects in the order they were added: sort the
	// table's blocks (sets, maps, chains) by their first line.
	var blocks []string
	var cur []string
	for _, l := range strings.Split(out, "\n") {
		switch {
		case strings.HasPrefix(l, "\t") && !strings.HasPrefix(l, "\t\t") && strings.HasSuffix(l, "{"):
			cur = []string{l}
		case l == "\t}":
			blocks = append(blocks, strings.Join(append(cur, l), "\n"))
			cur = nil
		case cur != nil:
			cur = append(cur, l)
		}
	}
	slices.Sort(blocks)
	return strings.Join(blocks, "\n")
}

var elementsBlock = regexp.MustCompile(`(?s)elements = \{[^}]*\}`)

// freshList loads rs into ns (replacing what is there) and lists it.
func freshList(t *testing.T, ns *kernel.NetNS, rs *Ruleset) string {
	t.Helper()
	if err := ns.Nft(context.Background(), (&Transaction{Replace: rs}).String()); err != nil {
		t.Fatalf("load rendered ruleset: %v", err)
	}
	return listTable(t, ns)
}

func TestKernelSyncReadback(t *testing.T) {
	kp := newKernelProxier(t)
	ref := ktest.NewNetNS(t)
	ctx := context.Background()
	// A table of someone else, which must survive everything.
	other := "table inet someone-else {\n\tchain c {\n\t\ttype filter hook input priority 0; policy accept;\n\t\tcounter\n\t}\n}\n"
	if err := kp.ns.Nft(ctx, other); err != nil {
		t.Fatal(err)
	}
	s := stateOf(proxytest.Fixture())
	ip := netip.MustParseAddr
	check := func(t *testing.T, d *proxy.Desired, wantRuns int) {
		t.Helper()
		if err := kp.Sync(ctx, d); err != nil {
			t.Fatal(err)
		}
		if kp.runs != wantRuns {
			t.Errorf("nft ran %d times, want %d; last script:\n%s", kp.runs, wantRuns, kp.last)
		}
		if got, want := listTable(t, kp.ns), freshList(t, ref, Render(d)); got != want {
			t.Fatalf("kernel table differs from a fresh load of Render:\n%s", lineDiff(got, want))
		}
	}
	check(t, s.desired(), 1)
	check(t, s.desired(), 1) // the same again: nothing sent
	n := s.edit(t, "default/web:http", func(sp *model.ServicePort) { sp.Endpoints[1].IP = ip("10.0.2.99") })
	check(t, s.desired(n), 2)
	n = s.edit(t, "default/web:http", func(sp *model.ServicePort) { sp.Endpoints = sp.Endpoints[:2] })
	check(t, s.desired(n), 3)
	n = s.edit(t, "default/affinity", func(sp *model.ServicePort) { sp.Endpoints = sp.Endpoints[1:] })
	check(t, s.desired(n), 4)
	n = s.edit(t, "default/local", func(*model.ServicePort) {})
	delete(s.ports, n)
	check(t, s.desired(n), 5)

	// A transaction the kernel refuses changes nothing and names the
	// service; the next Sync replaces the table whole.
	before := listTable(t, kp.ns)
	// The new element of default/prefer-close is made to clash with the
	// one of default/terminating: the kernel refuses (EEXIST) after the
	// transaction already deleted the old element, and must roll back.
	tampered := false
	kp.tamper = func(tx *nft.Transaction) {
		for _, o := range tx.Objects() {
			if e, ok := o.(*nft.Element); ok && e.String() == "10.1.0.9 . tcp . 80 . 0 : 10.0.2.98 . 8080" {
				e.Key, tampered = []string{"10.1.0.8 . tcp . 80 . 0"}, true
			}
		}
	}
	n = s.edit(t, "default/prefer-close", func(sp *model.ServicePort) { sp.Endpoints[0].IP = ip("10.0.2.98") })
	err := kp.Sync(ctx, s.desired(n))
	if !tampered {
		t.Fatalf("the script did not have the element to break:\n%s", kp.last)
	}
	if err == nil || !strings.Contains(err.Error(), "sync service default/prefer-close: ") {
		t.Fatalf("tampered Sync = %v, want an error naming default/prefer-close", err)
	}
	t.Log(err)
	if got := listTable(t, kp.ns); got != before {
		t.Fatalf("a refused transaction changed the table:\n%s", lineDiff(got, before))
	}
	check(t, s.desired(n), 7)
	if !strings.HasPrefix(kp.last, "add table ip kdive-proxy\ndelete table ip kdive-proxy\n") {
		t.Errorf("Sync after a failure did not replace the table")
	}

	if err := kp.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if err := kp.Cleanup(ctx); err != nil {
		t.Fatalf("Cleanup without a table: %v", err)
	}
	if got := listTable(t, kp.ns); got != "" {
		t.Errorf("table left after Cleanup:\n%s", got)
	}
	if out, err := kp.ns.Run(ctx, "", "nft", "list", "tables"); err != nil || !strings.Contains(out, "someone-else") {
		t.Errorf("another table was touched: %q, %v", out, err)
	}
}

// TestKernelScale1k programs 1,000 services × 10 endpoints, changes a few
// at random and checks the kernel's table against a fresh load.
func TestKernelScale1k(t *testing.T) {
	kp := newKernelProxier(t)
	ref := ktest.NewNetNS(t)
	ctx := context.Background()
	s := stateOf(GenerateDesired(1000, 10))
	start := time.Now()
	if err := kp.Sync(ctx, s.desired()); err != nil {
		t.Fatal(err)
	}
	t.Logf("first sync of 1000×10: %v", time.Since(start))
	for i := range 5 {
		var changed []model.ServicePortName
		for j := range 3 {
			n := s.edit(t, GeneratedPort(i*97+j*31, 10).Name.String(), func(sp *model.ServicePort) {
				switch j {
				case 0:
					sp.Endpoints[3].IP = netip.AddrFrom4([4]byte{10, 15, byte(i), byte(j)})
				case 1:
					sp.Endpoints = sp.Endpoints[:9]
				case 2:
					sp.NodePort = 30000 + i
				}
			})
			changed = append(changed, n)
		}
		start := time.Now()
		if err := kp.Sync(ctx, s.desired(changed...)); err != nil {
			t.Fatal(err)
		}
		t.Logf("change %d: %v", i, time.Since(start))
	}
	if got, want := listTable(t, kp.ns), freshList(t, ref, Render(s.desired())); got != want {
		t.Fatalf("kernel table differs from a fresh load:\n%s", lineDiff(got, want))
	}
}
