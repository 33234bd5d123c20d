package ipvs_test

import (
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/ktest"
	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy/ipvs"
)

// TestAtomicityIPVSVirtualServer: IPVS has no transactions; a Sync is
// all or nothing per virtual server and carries on past one that fails.
// The fault is the kernel's: IPVS refuses a real server whose address is
// not a unicast (or local) one for the node's routes (EINVAL), and the node
// has a broadcast route for pod-c's address. (A blackhole route does not
// do: the kernel's address type lookup treats it as unicast.) One Sync changes five services, in this order of virtual
// servers: a and b lose an endpoint, c swaps pod-b for pod-c (pod-b is
// deleted, then pod-c refused), d is new with pod-a and pod-c (added, then
// refused), e is new with pod-b; f is removed. After the failed Sync c's
// virtual server is as before (pod-b back at weight 1), d's does not
// exist, and everything else (the other virtual servers, kube-ipvs0's
// addresses, the ipsets and iptables of both flavours) is what the
// successful Sync after the route goes leaves.
func TestAtomicityIPVSVirtualServer(t *testing.T) {
	ktest.RequireFeature(t, kernel.FeatureIPVS)
	ktest.RequireFeature(t, kernel.FeatureDummy)
	ctx := t.Context()
	node := ktest.NewNetNS(t) // no pods: no traffic here
	a, b, c := ep(podA, "node-1"), ep(podB, "node-1"), ep(podC, "node-1")
	p := ipvs.New(ipvs.Options{NetNS: node, Flavour: "nft"})
	old := []model.ServicePort{svc("a", "10.1.0.11", a, b), svc("b", "10.1.0.12", a, b), svc("c", "10.1.0.13", a, b), svc("f", "10.1.0.16", a)}
	if err := p.Sync(ctx, desired(old...)); err != nil {
		t.Fatal(err)
	}
	before := readState(t, node).readRules(t, node)
	if _, err := node.Run(ctx, "", "ip", "link", "set", "lo", "up"); err != nil {
		t.Fatal(err)
	}
	if _, err := node.Run(ctx, "", "ip", "route", "add", "broadcast", podC+"/32", "dev", "lo"); err != nil {
		t.Fatal(err)
	}
	changed := []model.ServicePort{svc("a", "10.1.0.11", a), svc("b", "10.1.0.12", b), svc("c", "10.1.0.13", a, c),
		svc("d", "10.1.0.14", a, c), svc("e", "10.1.0.15", b)}
	start := time.Now()
	err := p.Sync(ctx, desired(changed...))
	took := time.Since(start)
	if err == nil {
		t.Fatal("the sync with pod-c's address a broadcast one succeeded")
	}
	for _, want := range []string{"sync service default/c: ", "sync service default/d: ", "invalid argument"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the error does not say %q: %v", want, err)
		}
	}
	failed := readState(t, node).readRules(t, node)

	if _, err := node.Run(ctx, "", "ip", "route", "del", "broadcast", podC+"/32", "dev", "lo"); err != nil {
		t.Fatal(err)
	}
	if err := p.Sync(ctx, desired(changed...)); err != nil {
		t.Fatalf("the retry: %v", err)
	}
	after := readState(t, node).readRules(t, node)

	const vsC, vsD = "TCP 10.1.0.13:80", "TCP 10.1.0.14:80"
	if got, want := failed.weights(vsC), before.weights(vsC); !mapsEqual(got, want) {
		t.Errorf("after the failed sync c has %v, want it as before: %v", got, want)
	}
	if _, ok := failed.vs[vsD]; ok {
		t.Errorf("after the failed sync d's virtual server exists (%v), want it not added", failed.weights(vsD))
	}
	for vs := range after.vs {
		if vs == vsC || vs == vsD {
			continue
		}
		if got, want := failed.weights(vs), after.weights(vs); !mapsEqual(got, want) {
			t.Errorf("after the failed sync %s has %v, want its new state %v", vs, got, want)
		}
	}
	for vs := range failed.vs {
		if _, ok := after.vs[vs]; !ok && vs != vsC && vs != vsD {
			t.Errorf("after the failed sync %s is still there (%v)", vs, failed.weights(vs))
		}
	}
	if !mapsEqual(after.weights(vsC), map[string]int{podA + ":8080": 1, podC + ":8080": 1}) || !mapsEqual(after.weights(vsD), map[string]int{podA + ":8080": 1, podC + ":8080": 1}) {
		t.Errorf("after the retry c has %v and d %v, want pod-a and pod-c in both", after.weights(vsC), after.weights(vsD))
	}
	if !reflect.DeepEqual(sortedPrefixes(failed.addrs), sortedPrefixes(after.addrs)) {
		t.Errorf("kube-ipvs0 after the failed sync %v, after the retry %v", failed.addrs, after.addrs)
	}
	if !reflect.DeepEqual(failed.sets, after.sets) {
		t.Errorf("ipsets after the failed sync:\n%v\nafter the retry:\n%v", failed.sets, after.sets)
	}
	if !reflect.DeepEqual(withoutCounters(failed.rules), withoutCounters(after.rules)) {
		t.Errorf("iptables after the failed sync:\n%v\nafter the retry:\n%v", failed.rules, after.rules)
	}
	if !t.Failed() {
		t.Logf("RESULT failed sync (%s): c as before, d absent, %d other virtual servers, %d addresses, %d ipsets and iptables as the retry left them; the retry converged",
			took.Round(time.Millisecond), len(after.vs)-2, len(after.addrs), len(after.sets))
	}
}

var saveCounters = regexp.MustCompile(`\[\d+:\d+\]`)

// withoutCounters is iptables-save's output without its comments (they
// carry the time) and counters.
func withoutCounters(rules map[string]string) map[string]string {
	out := map[string]string{}
	for f, text := range rules {
		var lines []string
		for _, l := range strings.Split(text, "\n") {
			if !strings.HasPrefix(l, "#") {
				lines = append(lines, saveCounters.ReplaceAllString(l, ""))
			}
		}
		out[f] = strings.Join(lines, "\n")
	}
	return out
}
