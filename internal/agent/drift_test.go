package agent

import (
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/ktest"
	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/podnet"
)

// Drift: what the agent programmed and someone else changed or removed is
// put back by the next periodic sync, at most one sync period later, and
// counted in kdive_drift_repairs_total{part}. Each test runs an agent
// in-process (atomicity_test.go's bed) with a 1 s sync period, tampers
// with the kernel from outside while the agent's loop is held between two
// syncs, and requires the part's first periodic sync after that to have
// put the kernel's state back and counted the repair (checkDrift).

const driftPeriod = time.Second

// driftCase is one tampering: do changes the kernel; the state read by
// the test must then come back to what it was, repairs objects counted.
type driftCase struct {
	name    string
	repairs float64 // kdive_drift_repairs_total{part} counted by the repair
	do      func(t *testing.T)
}

// checkDrift runs each case: the state must differ right after it, and
// the first periodic sync of the part after the test lets the agent go on
// must repair all of it: that sync must start within one period of the
// release (driftLate aside), log the repair, leave the state as it was
// and count exactly the case's repairs. The test holds the loop at that
// sync's end ("part synced", inside the log call) while it reads the state
// and the counter, so that no later sync can do the repair in its stead.
//
// Each case tampers while the agent's loop is held just after a sync
// (holdAfterSync), so that no sync can repair the change before the test
// has seen it: on a loaded machine, syncs in the test VM take longer than
// the period and run back to back, and one running while the test
// tampered put the change back before the test could read it ("changed
// nothing the test can see").
func (b *agentBed) checkDrift(part string, state func() string, cases []driftCase) {
	t := b.t
	t.Helper()
	period := b.cfg.SyncPeriod.Duration
	late := driftLate()
	series := `kdive_drift_repairs_total{part="` + part + `"}`
	// Nobody tampering: periodic syncs repair nothing.
	since := time.Now()
	ktest.Eventually(t, 2*period+late+5*time.Second, "two periodic syncs", ktest.Holds(func() bool { return len(b.logs.since(since, "synced")) >= 2 }))
	if n := b.metric(series); n != 0 {
		t.Fatalf("%s = %v before any tampering:\n%s", series, n, b.logs.dump())
	}
	want := state()
	var figures []string
	for _, c := range cases {
		resume := b.holdAfterSync(2*period + late + 5*time.Second)
		repairs0 := b.metric(series)
		c.do(t)
		if state() == want {
			t.Errorf("%s: changed nothing the test can see", c.name)
		}
		// The part's first full sync from now on is held at its end.
		repairing := b.armHold(func(r logRecord) bool {
			return r.Msg == "part synced" && r.Attrs["part"] == part && r.Attrs["full"] == "true"
		})
		at := time.Now()
		resume()
		rec := repairing.wait(t, period+late+10*time.Second, "the first periodic sync of "+part+" after "+c.name)
		took, err := time.ParseDuration(rec.Attrs["took"])
		if err != nil {
			t.Fatalf("log record %s: %v", rec, err)
		}
		// The round of that sync started within one period of the release:
		// the earliest full sync of any part since then (the parts sync in
		// order, podnet before proxy, on the same tick).
		roundStart := rec.At.Add(-took)
		for _, r := range b.logs.since(at, "part synced") {
			if d, err := time.ParseDuration(r.Attrs["took"]); err == nil && r.Attrs["full"] == "true" && r.At.Add(-d).Before(roundStart) {
				roundStart = r.At.Add(-d)
			}
		}
		if wait := roundStart.Sub(at); wait > period+late {
			t.Errorf("%s: the first periodic sync after the release started %s after it, more than one period (%s) + %s", c.name, wait.Round(time.Millisecond), period, late)
		}
		if got := state(); got != want {
			t.Errorf("%s: not repaired by the first periodic sync of %s (%s):\nwant:\n%s\ngot:\n%s", c.name, part, rec, want, got)
		}
		logged := 0
		for _, r := range b.logs.since(at, "") {
			if r.Msg == map[string]string{"podnet": "repaired pod network drift", "proxy": "repaired proxy drift"}[part] {
				logged++
			}
		}
		if logged == 0 {
			t.Errorf("%s: no repair logged by the first periodic sync of %s (%s):\n%s", c.name, part, rec, b.logs.dump())
		}
		repairs := b.metric(series) - repairs0
		if repairs != c.repairs {
			t.Errorf("%s: %s grew by %v, want %v", c.name, series, repairs, c.repairs)
		}
		repairing.resume()
		b.logs.setHook(nil)
		figures = append(figures, fmt.Sprintf("%s: %s (waited %s, repairing sync %s, +%v repairs)",
			c.name, rec.At.Sub(at).Round(time.Millisecond), roundStart.Sub(at).Round(time.Millisecond), took.Round(time.Millisecond), repairs))
	}
	bedResult(t, "%s", strings.Join(figures, "; "))
}

// driftLate is how late the first periodic sync after a release may
// start beyond one sync period: the Go runtime's timer and scheduling on a
// busy machine, and in the test VM an emulated CPU (up to 0.83 s past the
// release was seen there, 1.006 s natively, both within the period).
func driftLate() time.Duration {
	if ktest.InVM() {
		return 3 * time.Second
	}
	return 300 * time.Millisecond
}

// logHold is the agent's loop held inside one log call.
type logHold struct {
	held   chan logRecord
	resume func()
}

// armHold holds the agent's loop at the next log record that match
// accepts, inside the logging call (as recordFailures reads the kernel
// inside "sync failed"), until resume; it replaces the bed's log hook.
// resume may be called more than once, and runs at cleanup too, so that
// a test failing meanwhile does not leave the agent stuck.
func (b *agentBed) armHold(match func(logRecord) bool) *logHold {
	h := &logHold{held: make(chan logRecord, 1)}
	release := make(chan struct{})
	var fired atomic.Bool
	b.logs.setHook(func(r logRecord) {
		if !match(r) || !fired.CompareAndSwap(false, true) {
			return
		}
		h.held <- r
		<-release
	})
	h.resume = sync.OnceFunc(func() { close(release) })
	b.t.Cleanup(h.resume)
	return h
}

// wait returns the record the loop is held at, failing the test when none
// came within timeout.
func (h *logHold) wait(t *testing.T, timeout time.Duration, what string) logRecord {
	t.Helper()
	select {
	case r := <-h.held:
		return r
	case <-time.After(timeout):
		h.resume()
		t.Fatalf("waiting for %s: not within %s", what, timeout)
		return logRecord{}
	}
}

// holdAfterSync holds the agent's loop at its next "synced" log line:
// that sync is done and the next cannot start until resume is called. It
// fails the test when no sync ends within timeout.
func (b *agentBed) holdAfterSync(timeout time.Duration) (resume func()) {
	b.t.Helper()
	h := b.armHold(func(r logRecord) bool { return r.Msg == "synced" })
	h.wait(b.t, timeout, "a sync to end")
	return h.resume
}

var (
	nftElements = regexp.MustCompile(`(?s)elements = \{[^}]*\}`)
	nftExpires  = regexp.MustCompile(` expires [0-9hmsd.]+`)
)

// normNft makes two listings of equal tables equal: elements sorted in
// each set, and the table's blocks sorted (the kernel lists objects in the
// order they were added).
func normNft(out string) string {
	out = nftExpires.ReplaceAllString(out, "")
	out = nftElements.ReplaceAllStringFunc(out, func(block string) string {
		inner := strings.TrimSuffix(strings.TrimPrefix(block, "elements = {"), "}")
		var items []string
		for _, it := range strings.Split(inner, ",") {
			items = append(items, strings.Join(strings.Fields(it), " "))
		}
		slices.Sort(items)
		return "elements = { " + strings.Join(items, ", ") + " }"
	})
	var blocks, cur []string
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

// driftBed is a bed with n1, n2, n3 and two services, in proxy mode mode,
// synced and healthy.
func driftBed(t *testing.T, mode string) *agentBed {
	t.Helper()
	bed := newAgentBed(t, mode, driftPeriod)
	bed.nodes = []corev1.Node{
		testNode("n1", "192.0.2.10", "10.244.1.0/24"),
		testNode("n2", "192.0.2.11", "10.244.2.0/24"),
		testNode("n3", "198.51.100.10", "10.244.3.0/24"),
	}
	if mode != "none" {
		bed.addService("web", "10.96.0.10", "10.244.2.5", "10.244.2.6")
		bed.addService("api", "10.96.0.20", "10.244.2.7")
	}
	bed.run()
	return bed
}

// TestDriftNFTables: the nftables proxy's table flushed, deleted, one
// element deleted, one element changed.
func TestDriftNFTables(t *testing.T) {
	bed := driftBed(t, "nftables")
	ktest.Eventually(t, 10*time.Second, "the services' rules", ktest.Holds(func() bool {
		tbl := bed.nftTable()
		return strings.Contains(tbl, "10.96.0.10 . tcp . 80") && strings.Contains(tbl, "10.96.0.20 . tcp . 80")
	}))
	bed.checkHealthy()
	state := func() string { return normNft(bed.nftTable()) }
	bed.checkDrift("proxy", state, []driftCase{
		{"nft flush table", 12, func(t *testing.T) { bed.sh("nft", "flush", "table", "ip", "kdive-proxy") }},
		{"nft delete element (web's cluster IP)", 3, func(t *testing.T) {
			bed.sh("nft", "delete", "element", "ip", "kdive-proxy", "service-ips", "{ 10.96.0.10 . tcp . 80 }")
		}},
		{"api's element changed to drop", 1, func(t *testing.T) {
			if err := bed.node.Nft(t.Context(), "delete element ip kdive-proxy service-ips { 10.96.0.20 . tcp . 80 }\n"+
				"add element ip kdive-proxy service-ips { 10.96.0.20 . tcp . 80 : drop }\n"); err != nil {
				t.Fatal(err)
			}
		}},
		{"nft delete table", 1, func(t *testing.T) { bed.sh("nft", "delete", "table", "ip", "kdive-proxy") }},
	})
}

var svcChainRule = regexp.MustCompile(`(?m)^-A (KUBE-SVC-[A-Z0-9]+) .*$`)

// TestDriftIPTables: a KUBE-SVC rule deleted, KUBE-SERVICES flushed, the
// jump from PREROUTING deleted.
func TestDriftIPTables(t *testing.T) {
	bed := driftBed(t, "iptables")
	ktest.Eventually(t, 15*time.Second, "the services' rules", ktest.Holds(func() bool {
		nat := bed.natTable()
		return strings.Contains(nat, "default/web:http") && strings.Contains(nat, "default/api:http")
	}))
	bed.checkHealthy()
	bed.checkDrift("proxy", bed.natTable, []driftCase{
		{"a KUBE-SVC rule deleted", 1, func(t *testing.T) {
			m := svcChainRule.FindStringSubmatch(bed.natTable())
			if m == nil {
				t.Fatalf("no KUBE-SVC rule:\n%s", bed.natTable())
			}
			bed.sh("iptables", "-t", "nat", "-D", m[1], "1")
		}},
		{"KUBE-SERVICES flushed", 1, func(t *testing.T) { bed.sh("iptables", "-t", "nat", "-F", "KUBE-SERVICES") }},
		{"the jump from PREROUTING deleted", 1, func(t *testing.T) {
			for _, l := range strings.Split(bed.natTable(), "\n") {
				if strings.HasPrefix(l, "-A PREROUTING ") && strings.HasSuffix(l, "-j KUBE-SERVICES") {
					args := append([]string{"-t", "nat", "-D", "PREROUTING"}, splitRule(strings.TrimPrefix(l, "-A PREROUTING "))...)
					bed.sh("iptables", args...)
					return
				}
			}
			t.Fatalf("no jump to KUBE-SERVICES in PREROUTING:\n%s", bed.natTable())
		}},
	})
}

// splitRule splits an iptables-save rule into arguments, keeping quoted
// comments whole.
func splitRule(s string) []string {
	var out []string
	for s = strings.TrimSpace(s); s != ""; s = strings.TrimSpace(s) {
		if s[0] == '"' {
			end := strings.IndexByte(s[1:], '"') + 1
			out = append(out, s[1:end])
			s = s[end+1:]
			continue
		}
		f, rest, _ := strings.Cut(s, " ")
		out = append(out, f)
		s = rest
	}
	return out
}

// TestDriftPodNet: the VXLAN device deleted, its address deleted, n3's FDB
// entry pointed elsewhere, n3's neighbour entry deleted, the blackhole
// deleted. (A deleted peer route: TestAgentReconcilesNodes.)
func TestDriftPodNet(t *testing.T) {
	bed := driftBed(t, "none")
	n3VTEP := podnet.VTEPMAC(netip.MustParseAddr("198.51.100.10"))
	state := func() string {
		var out []string
		out = append(out, routesText(t, bed.node))
		fdb, _ := bed.node.FDB(podnet.VXLANDevice)
		for _, e := range fdb {
			out = append(out, "fdb "+e.String())
		}
		nbs, _ := bed.node.Neighbors(podnet.VXLANDevice)
		for _, nb := range nbs {
			if nb.Permanent {
				out = append(out, "neigh "+nb.IP.String()+" "+nb.MAC.String())
			}
		}
		if l, err := bed.node.LinkByName(podnet.VXLANDevice); err == nil {
			for _, a := range l.Addrs {
				out = append(out, "addr "+a.String())
			}
			out = append(out, "mtu "+strconv.Itoa(l.MTU))
		} else {
			out = append(out, "no "+podnet.VXLANDevice)
		}
		slices.Sort(out)
		return strings.Join(out, "\n")
	}
	ktest.Eventually(t, 10*time.Second, "n3 over VXLAN", ktest.Holds(func() bool {
		s := state()
		return strings.Contains(s, "10.244.3.0/24 via 10.244.3.0 dev vxlan.kdive onlink") &&
			strings.Contains(s, "fdb "+n3VTEP.String()) && strings.Contains(s, "neigh 10.244.3.0 "+n3VTEP.String())
	}))
	bed.checkHealthy()
	bed.checkDrift("podnet", state, []driftCase{
		{"vxlan.kdive deleted", 5, func(t *testing.T) {
			if err := bed.node.DeleteLink(podnet.VXLANDevice); err != nil {
				t.Fatal(err)
			}
		}},
		{"vxlan.kdive's address deleted", 3, func(t *testing.T) {
			if err := bed.node.DelAddr(podnet.VXLANDevice, netip.MustParsePrefix("10.244.1.0/32")); err != nil {
				t.Fatal(err)
			}
		}},
		{"n3's FDB entry pointed elsewhere", 2, func(t *testing.T) {
			if err := bed.node.ReplaceFDB(kernel.FDBEntry{Dev: podnet.VXLANDevice, MAC: n3VTEP, Dst: netip.MustParseAddr("198.51.100.99")}); err != nil {
				t.Fatal(err)
			}
		}},
		{"n3's neighbour entry deleted", 1, func(t *testing.T) {
			bed.sh("ip", "neigh", "del", "10.244.3.0", "dev", podnet.VXLANDevice)
		}},
		{"the blackhole deleted", 1, func(t *testing.T) {
			if err := bed.node.DeleteRoute(kernel.Route{Dst: netip.MustParsePrefix("10.244.1.0/24"), Blackhole: true}); err != nil {
				t.Fatal(err)
			}
		}},
	})
}

// TestDriftIPIP (test VM): with IPIP across subnets, tunl0 set down (the
// kernel drops the routes through it), its address deleted, n3's route
// deleted.
func TestDriftIPIP(t *testing.T) {
	ktest.RequireFeature(t, kernel.FeatureIPIP)
	bed := newAgentBed(t, "none", driftPeriod)
	bed.cfg.PodNetwork = model.PodNetwork{Interface: model.InterfaceRouted, Encap: model.EncapIPIP, EncapPolicy: model.EncapCrossSubnet}
	bed.nodes = []corev1.Node{
		testNode("n1", "192.0.2.10", "10.244.1.0/24"),
		testNode("n2", "192.0.2.11", "10.244.2.0/24"),
		testNode("n3", "198.51.100.10", "10.244.3.0/24"),
	}
	bed.run()
	state := func() string {
		out := []string{routesText(t, bed.node)}
		if l, err := bed.node.LinkByName("tunl0"); err == nil {
			out = append(out, fmt.Sprintf("tunl0 up %v mtu %d", l.Up, l.MTU))
			for _, a := range l.Addrs {
				out = append(out, "addr "+a.String())
			}
		}
		return strings.Join(out, "\n")
	}
	ktest.Eventually(t, 20*time.Second, "n3 over IPIP", ktest.Holds(func() bool {
		return strings.Contains(routesText(t, bed.node), "10.244.3.0/24 via 198.51.100.10 dev tunl0")
	}))
	bed.checkHealthy()
	bed.checkDrift("podnet", state, []driftCase{
		{"tunl0 set down", 2, func(t *testing.T) { bed.sh("ip", "link", "set", "tunl0", "down") }},
		{"tunl0's address deleted", 2, func(t *testing.T) {
			if err := bed.node.DelAddr("tunl0", netip.MustParsePrefix("10.244.1.0/32")); err != nil {
				t.Fatal(err)
			}
		}},
		{"n3's route deleted", 1, func(t *testing.T) { bed.sh("ip", "route", "del", "10.244.3.0/24") }},
	})
}

// TestDriftIPVS (test VM): in IPVS mode, a virtual server deleted, a real
// server deleted, a service address deleted from kube-ipvs0, an ipset
// flushed.
func TestDriftIPVS(t *testing.T) {
	ktest.RequireFeature(t, kernel.FeatureIPVS)
	bed := driftBed(t, "ipvs")
	sorted := func(s string) string {
		ls := strings.Split(strings.TrimSpace(s), "\n")
		slices.Sort(ls)
		return strings.Join(ls, "\n")
	}
	state := func() string {
		out := []string{sorted(bed.sh("ipvsadm", "-Sn"))}
		if l, err := bed.node.LinkByName("kube-ipvs0"); err == nil {
			for _, a := range l.Addrs {
				out = append(out, "addr "+a.String())
			}
		}
		out = append(out, sorted(bed.sh("ipset", "save")))
		return strings.Join(out, "\n")
	}
	// The first sync in the VM loads ip_vs and friends and makes every
	// ipset, virtual server and rule by emulated CPU: 31 s once under a
	// load average of 20 (waiting 54 s for it), a few seconds when idle.
	ktest.Eventually(t, 120*time.Second, "the services' virtual servers", ktest.Holds(func() bool {
		s := state()
		return strings.Contains(s, "10.96.0.10:80") && strings.Contains(s, "10.96.0.20:80") && strings.Contains(s, "addr 10.96.0.20/32")
	}))
	bed.checkHealthy()
	bed.checkDrift("proxy", state, []driftCase{
		{"a virtual server deleted", 3, func(t *testing.T) { bed.sh("ipvsadm", "-D", "-t", "10.96.0.10:80") }},
		{"a real server deleted", 1, func(t *testing.T) { bed.sh("ipvsadm", "-d", "-t", "10.96.0.10:80", "-r", "10.244.2.5:8080") }},
		{"a service address deleted", 1, func(t *testing.T) {
			if err := bed.node.DelAddr("kube-ipvs0", netip.MustParsePrefix("10.96.0.20/32")); err != nil {
				t.Fatal(err)
			}
		}},
		{"KUBE-CLUSTER-IP flushed", 2, func(t *testing.T) { bed.sh("ipset", "flush", "KUBE-CLUSTER-IP") }},
	})
}
