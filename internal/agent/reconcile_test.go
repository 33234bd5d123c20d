package agent

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/kdive/kdive/internal/kernel/ktest"
)

// partRuns counts the syncs of part logged at or after since, however
// they ended (synced, waiting, failed).
func (b *agentBed) partRuns(since time.Time, part string) int {
	n := 0
	for _, r := range b.logs.since(since, "") {
		if r.Attrs["part"] == part {
			n++
		}
	}
	return n
}

func (b *agentBed) hasRule(element string) func() bool {
	return func() bool { return strings.Contains(b.nftTable(), element) }
}

// TestAgentServiceSyncsOnlyProxy: Service and EndpointSlice changes sync
// the proxy and leave the pod network alone (no link dump, conflist
// check, IPAM read or podnet.Sync); a Node change syncs both.
func TestAgentServiceSyncsOnlyProxy(t *testing.T) {
	bed := newAgentBed(t, "nftables", time.Minute) // no periodic resync meanwhile
	n1, n2 := testNode("n1", "192.0.2.10", "10.244.1.0/24"), testNode("n2", "192.0.2.11", "10.244.2.0/24")
	bed.nodes = []corev1.Node{n1, n2}
	bed.addService("web", "10.96.0.10", "10.244.2.5")
	bed.run()
	ktest.Eventually(t, 10*time.Second, "web's rules", ktest.Holds(bed.hasRule("10.96.0.10 . tcp . 80")))
	ktest.Eventually(t, 10*time.Second, "the blackhole of n1's block", ktest.Holds(func() bool {
		return strings.Contains(routesText(t, bed.node), "blackhole 10.244.1.0/24")
	}))
	// One change first, so that whatever the start left pending is done.
	bed.addService("api", "10.96.0.20", "10.244.2.7")
	bed.apply()
	ktest.Eventually(t, 10*time.Second, "api's rules", ktest.Holds(bed.hasRule("10.96.0.20 . tcp . 80")))

	since := time.Now()
	bed.addService("db", "10.96.0.30", "10.244.2.8")
	bed.slices[0].Endpoints = bed.slices[0].Endpoints[:0] // web loses its endpoint
	bed.apply()
	ktest.Eventually(t, 10*time.Second, "db's rules", ktest.Holds(bed.hasRule("10.96.0.30 . tcp . 80")))
	ktest.Eventually(t, 10*time.Second, "web without endpoints", ktest.Holds(func() bool {
		return !strings.Contains(bed.nftTable(), "10.244.2.5")
	}))
	if n := bed.partRuns(since, "proxy"); n == 0 {
		t.Errorf("no proxy sync logged for the Service changes:\n%s", bed.logs.dump())
	}
	if n := bed.partRuns(since, "podnet"); n != 0 {
		t.Errorf("%d pod network syncs for Service and EndpointSlice changes, want none:\n%s", n, bed.logs.dump())
	}

	// A Node change syncs both halves.
	since = time.Now()
	n2.Status.Addresses[0].Address = "192.0.2.12"
	bed.nodes = []corev1.Node{n1, n2}
	bed.apply()
	ktest.Eventually(t, 10*time.Second, "n2's new address routed", ktest.Holds(func() bool {
		return strings.Contains(routesText(t, bed.node), "10.244.2.0/24 via 192.0.2.12 dev eth0")
	}))
	ktest.Eventually(t, 10*time.Second, "a proxy sync after the Node change", ktest.Holds(func() bool {
		return bed.partRuns(since, "proxy") > 0
	}))
}

// TestAgentPodNetFailureDoesNotHoldProxy: the pod network fails on every
// sync (no interface holds the node's InternalIP) and backs off; a
// Service added meanwhile is programmed at once, not at the pod network's
// next retry, and the proxy's syncs do not fail.
func TestAgentPodNetFailureDoesNotHoldProxy(t *testing.T) {
	bed := newAgentBed(t, "nftables", time.Minute)
	bed.nodes = []corev1.Node{testNode("n1", "192.0.2.99", "10.244.1.0/24"), testNode("n2", "192.0.2.11", "10.244.2.0/24")}
	bed.addService("web", "10.96.0.10", "10.244.2.5")
	bed.run()
	ktest.Eventually(t, 10*time.Second, "web's rules", ktest.Holds(bed.hasRule("10.96.0.10 . tcp . 80")))
	// Wait for a long backoff of the pod network: 200 ms doubling to 3.2 s.
	var failures []logRecord
	ktest.Eventually(t, 20*time.Second, "the pod network backing off 3.2s", ktest.Holds(func() bool {
		failures = bed.logs.since(time.Time{}, "sync failed; retrying")
		return len(failures) > 0 && failures[len(failures)-1].Attrs["in"] == "3.2s"
	}))
	for _, f := range failures {
		if f.Attrs["part"] != "podnet" || !strings.Contains(f.Attrs["err"], "no interface holds the node's InternalIP 192.0.2.99") {
			t.Errorf("want only the pod network failing: %s", f)
		}
	}

	bed.addService("api", "10.96.0.20", "10.244.2.7")
	bed.apply()
	ktest.Eventually(t, 10*time.Second, "api's rules", ktest.Holds(bed.hasRule("10.96.0.20 . tcp . 80")))
	if now := bed.logs.since(time.Time{}, "sync failed; retrying"); len(now) != len(failures) {
		t.Errorf("the Service waited for the pod network's retry (%d failures when it was added, %d when programmed):\n%s", len(failures), len(now), bed.logs.dump())
	}
}
