package agent

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/kdive/kdive/internal/cni/ipam"
)

func TestOrphanedAllocations(t *testing.T) {
	idx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	pod := func(name, node, ip string, phase corev1.PodPhase) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
			Spec:       corev1.PodSpec{NodeName: node},
			Status:     corev1.PodStatus{Phase: phase, PodIPs: []corev1.PodIP{{IP: ip}}},
		}
	}
	for _, p := range []*corev1.Pod{
		pod("web", "node-1", "10.0.1.2", corev1.PodRunning),
		pod("elsewhere", "node-2", "10.0.1.3", corev1.PodRunning), // another node's claim does not count
		pod("done", "node-1", "10.0.1.4", corev1.PodSucceeded),
	} {
		if err := idx.Add(p); err != nil {
			t.Fatal(err)
		}
	}
	lp := &localPods{lister: corelisters.NewPodLister(idx), node: "node-1", since: map[netip.Addr]time.Time{}}
	alloc := func(ip string) ipam.Allocation {
		return ipam.Allocation{Addr: netip.MustParseAddr(ip), Attachment: ipam.Attachment{ContainerID: "c-" + ip, IfName: "eth0"}}
	}
	allocs := []ipam.Allocation{alloc("10.0.1.2"), alloc("10.0.1.3"), alloc("10.0.1.4"), alloc("10.0.1.5")}
	t0 := time.Unix(1000, 0)
	if got, err := lp.orphans(allocs, t0); err != nil || len(got) != 0 {
		t.Fatalf("at first sight nothing is orphaned yet (grace); got %v, %v", got, err)
	}
	got, err := lp.orphans(allocs, t0.Add(orphanGrace))
	if err != nil {
		t.Fatal(err)
	}
	var addrs []string
	for _, o := range got {
		addrs = append(addrs, o.Addr.String())
	}
	if want := []string{"10.0.1.3", "10.0.1.4", "10.0.1.5"}; !slices.Equal(addrs, want) {
		t.Errorf("orphans after the grace period = %v, want %v", addrs, want)
	}
	// A pod taking the address clears it, and the clock restarts if it
	// is orphaned again.
	if err := idx.Add(pod("late", "node-1", "10.0.1.5", corev1.PodRunning)); err != nil {
		t.Fatal(err)
	}
	if got, err = lp.orphans(allocs, t0.Add(orphanGrace+time.Second)); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Errorf("after 10.0.1.5 got a pod: orphans = %v, want 10.0.1.3 and 10.0.1.4", got)
	}
	if _, ok := lp.since[netip.MustParseAddr("10.0.1.5")]; ok {
		t.Error("10.0.1.5 is held again but still has an orphan clock")
	}
}
