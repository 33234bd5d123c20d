package iptables

import (
	"context"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy"
	"github.com/kdive/kdive/internal/xtables"
)

// TestRollbackLaterBatch: a partial Sync large enough to be batched (450
// services whose 10 endpoints all move: about 14 nat transactions in two
// iptables-restore processes) fails in its last transaction, which the
// kernel refuses because it deletes a removed service's KUBE-SVC chain
// that an administrator's chain jumps to (EBUSY). Every transaction before
// it, the whole first process included, is committed by then. The Sync
// puts them back: nat and filter, as iptables-save prints them (counters
// aside), are what they were before it. The next Sync (a full one, as
// after every failure) succeeds and keeps the chain in use.
func TestRollbackLaterBatch(t *testing.T) {
	ctx := context.Background()
	kp := newKernelProxier(t, FlavourNFT)
	d := scaleDesired(450, 10)
	if err := kp.Sync(ctx, d); err != nil {
		t.Fatal(err)
	}
	victim := d.Services[7].Name
	svc := kp.r.names.port(victim).svc
	if _, err := kp.ns.Run(ctx, "*nat\n:ADMIN-TEST - [0:0]\n-A ADMIN-TEST -j "+svc+"\nCOMMIT\n", FlavourNFT.Restore(), "-w", "--noflush"); err != nil {
		t.Fatal(err)
	}
	before := savedTables(t, kp, FlavourNFT)
	kp.sent()

	moved := moveAll(d, victim)
	start := time.Now()
	err := kp.Sync(ctx, moved)
	failed := time.Since(start)
	if err == nil || !strings.Contains(err.Error(), "Device or resource busy") || !strings.Contains(err.Error(), svc) {
		t.Fatalf("sync deleting %s, which ADMIN-TEST jumps to: err = %v, want EBUSY naming the chain", svc, err)
	}
	sent := kp.sent()
	if after := savedTables(t, kp, FlavourNFT); after != before {
		t.Errorf("nat and filter after the failed sync differ from before:\n%s", setDiff(before, after))
	}
	st := kp.Stats()
	if st.Rollbacks != 1 || st.Failures != 1 {
		t.Errorf("stats: %d rollbacks, %d failures; want 1 and 1", st.Rollbacks, st.Failures)
	}
	// The sync's restores, then the rollback's.
	rollback := ""
	if st.Rollbacks == 1 && len(sent) > 0 {
		rollback, sent = sent[len(sent)-1], sent[:len(sent)-1]
	}
	tx := transactions(sent)
	if len(sent) < 2 || len(tx) < 10 {
		t.Errorf("the sync sent %d transactions in %d restores, want a batched write in several processes", len(tx), len(sent))
	}

	// The retry.
	start = time.Now()
	if err := kp.Sync(ctx, moved); err != nil {
		t.Fatalf("the retry: %v", err)
	}
	if t.Failed() {
		return
	}
	t.Logf("RESULT failed sync: %d transactions in %d restores, the last refused, rollback of %d bytes, %s in all; nat and filter as before; the retry converged in %s",
		len(tx), len(sent), len(rollback), failed.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	nat := parseSave(iptables(t, kp.ns, FlavourNFT, "save", "-t", "nat"))[TableNAT]
	for _, c := range kp.Ruleset().Chains() {
		if c.Table == TableNAT && !c.sameAsSaved(nat.Rules[c.Name]) {
			t.Fatalf("after the retry %s holds %q, want\n%s", c.Name, nat.Rules[c.Name], c.text())
		}
	}
	if !nat.Declares(svc) || strings.Contains(strings.Join(nat.Rules[chainServices], "\n"), victim.String()) {
		t.Errorf("after the retry: want %s kept (ADMIN-TEST jumps to it) and no KUBE-SERVICES rule of %s", svc, victim)
	}
}

// TestRollbackFullSync: a node's first Sync (a full one: 450 services,
// about 14 nat transactions in two processes, then filter's, the last
// nat one with the jumps from the built-in chains, and mangle's) fails in
// its last transaction, mangle's: a rule jumping to a chain that does not
// exist is slipped into it, which iptables-restore refuses (the fault is
// real, where it hits is chosen). By then filter and nat are committed,
// hooks included. The rollback takes all of it out: both tables are as
// they were, an administrator's rules in them untouched. The retry succeeds.
// For iptables-legacy, whose first sync into an empty table goes as one
// process, the same happens in one run of iptables-legacy-restore.
func TestRollbackFullSync(t *testing.T) {
	for _, f := range xtables.Flavours {
		t.Run(string(f), func(t *testing.T) { testRollbackFullSync(t, f) })
	}
}

func testRollbackFullSync(t *testing.T, f Flavour) {
	ctx := context.Background()
	kp := newKernelProxier(t, f)
	foreign := "*nat\n:FOREIGN - [0:0]\n-A FOREIGN -s 192.0.2.1/32 -j RETURN\n-A PREROUTING -s 192.0.2.2/32 -j FOREIGN\nCOMMIT\n" +
		"*filter\n-A INPUT -s 192.0.2.3/32 -j ACCEPT\nCOMMIT\n"
	if _, err := kp.ns.Run(ctx, foreign, f.Restore(), "-w", "--noflush"); err != nil {
		t.Fatal(err)
	}
	before := savedTables(t, kp, f)
	run, faults := kp.run, 0
	kp.run = func(ctx context.Context, stdin, name string, args ...string) (string, error) {
		if i := strings.Index(stdin, "*mangle\n"); i >= 0 && faults == 0 && strings.HasSuffix(name, "-restore") {
			faults++
			stdin = stdin[:i] + strings.Replace(stdin[i:], "COMMIT\n", "-A "+ChainCanary+" -j KDIVE-NO-SUCH-CHAIN\nCOMMIT\n", 1)
		}
		return run(ctx, stdin, name, args...)
	}
	d := scaleDesired(450, 10)
	err := kp.Sync(ctx, d)
	if err == nil || faults != 1 {
		t.Fatalf("first sync with a bad mangle rule: err = %v (%d faults injected)", err, faults)
	}
	sent := kp.sent()
	if after := savedTables(t, kp, f); after != before {
		t.Errorf("nat and filter after the failed sync differ from before:\n%s", setDiff(before, after))
	}
	st := kp.Stats()
	if st.Rollbacks != 1 {
		t.Errorf("%d rollbacks, want 1", st.Rollbacks)
	}
	rollback := ""
	if st.Rollbacks == 1 && len(sent) > 0 {
		rollback, sent = sent[len(sent)-1], sent[:len(sent)-1]
	}
	tx := transactions(sent)
	if batched := len(sent) >= 2 && len(tx) >= 10; f == FlavourNFT && !batched || len(tx) < 3 || tx[len(tx)-1] != TableMangle {
		t.Errorf("the sync sent %v in %d restores, want several ending with mangle (batched for nft)", tx, len(sent))
	}
	if !strings.Contains(rollback, "-D PREROUTING ") {
		t.Errorf("the rollback deletes no hook from PREROUTING:\n%.2000s", rollback)
	}
	if err := kp.Sync(ctx, d); err != nil {
		t.Fatalf("the retry: %v", err)
	}
	if !t.Failed() {
		t.Logf("RESULT %s: failed first sync: %d transactions in %d restores, the last (mangle) refused, rollback of %d bytes (%d hook jumps deleted); nat and filter as before",
			f, len(tx), len(sent), len(rollback), strings.Count(rollback, "\n-D "))
	}
	nat := iptables(t, kp.ns, f, "save", "-t", "nat")
	for _, want := range []string{"-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES", "-A FOREIGN -s 192.0.2.1/32 -j RETURN"} {
		if !strings.Contains(nat, want) {
			t.Errorf("nat after the retry lacks %q", want)
		}
	}
}

var saveCounters = regexp.MustCompile(`\[\d+:\d+\]`)

// savedTables is iptables-save of nat and filter without its comments and
// counters.
func savedTables(t *testing.T, kp *kernelProxier, f Flavour) string {
	t.Helper()
	var out []string
	for _, table := range []Table{TableNAT, TableFilter} {
		for _, l := range strings.Split(iptables(t, kp.ns, f, "save", "-t", string(table)), "\n") {
			if !strings.HasPrefix(l, "#") {
				out = append(out, saveCounters.ReplaceAllString(l, ""))
			}
		}
	}
	return strings.Join(out, "\n")
}

// setDiff lists the lines only one of a and b has (at most 20 of each).
func setDiff(a, b string) string {
	count := func(s string) map[string]int {
		m := map[string]int{}
		for _, l := range strings.Split(s, "\n") {
			m[l]++
		}
		return m
	}
	ca, cb := count(a), count(b)
	var out []string
	for _, side := range []struct {
		sign     string
		from, to map[string]int
	}{{"-", ca, cb}, {"+", cb, ca}} {
		n := 0
		for l, k := range side.from {
			if k > side.to[l] && n < 20 {
				out = append(out, side.sign+" "+l)
				n++
			}
		}
	}
	return strings.Join(out, "\n")
}

// moveAll is d with every endpoint of every port moved to a new address,
// and without the port gone (Changed naming them all).
func moveAll(d *proxy.Desired, gone model.ServicePortName) *proxy.Desired {
	out := *d
	out.Services = nil
	out.Changed = map[model.ServicePortName]bool{gone: true}
	for _, p := range d.Services {
		if p.Name == gone {
			continue
		}
		sp := p.ServicePort
		sp.Endpoints = append([]model.Endpoint(nil), sp.Endpoints...)
		for i := range sp.Endpoints {
			a := sp.Endpoints[i].IP.As4()
			a[1] += 16
			sp.Endpoints[i].IP = netip.AddrFrom4(a)
		}
		out.Services = append(out.Services, proxy.Resolve(sp, d.Node))
		out.Changed[sp.Name] = true
	}
	return &out
}
