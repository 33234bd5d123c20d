package agent

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/kdive/kdive/internal/cni/ipam"
)

// orphanGrace is how long an allocated pod address may go without a pod of
// this node holding it before it counts as orphaned: the kubelet reports
// a new pod's IP a moment after CNI ADD.
const orphanGrace = 2 * time.Minute

// localPods follows the Pods scheduled to this node (a field selector on
// spec.nodeName, so a node's agent never caches the cluster's pods), to
// tell which of the node's IPAM allocations no pod holds: a CNI DEL that
// never came leaks an address, as Calico's IPAM garbage collector knows.
// kdive reports them (a metric and a log line) rather than freeing them:
// the runtime's CNI GC, given the attachments it knows, frees them safely.
type localPods struct {
	synced cache.InformerSynced
	lister corelisters.PodLister
	node   string
	// since is when each allocation was first seen with no pod holding it.
	since map[netip.Addr]time.Time
}

func (a *Agent) setupPods(client kubernetes.Interface) (informers.SharedInformerFactory, error) {
	sel := fields.OneTermEqualSelector("spec.nodeName", a.cfg.NodeName).String()
	factory := informers.NewSharedInformerFactoryWithOptions(client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = sel }))
	inf := factory.Core().V1().Pods()
	// Pods only feed the next sync's report; they trigger nothing.
	if _, err := inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{}); err != nil {
		return nil, fmt.Errorf("watch pods: %w", err)
	}
	a.pods = &localPods{synced: inf.Informer().HasSynced, lister: inf.Lister(), node: a.cfg.NodeName, since: map[netip.Addr]time.Time{}}
	return factory, nil
}

// errPodsNotSynced is orphans' error until the pod cache has synced.
var errPodsNotSynced = errors.New("pods of this node not listed yet")

// orphans returns the allocations no pod of this node has held for
// orphanGrace, as of now.
func (lp *localPods) orphans(allocs []ipam.Allocation, now time.Time) ([]ipam.Allocation, error) {
	if lp.synced != nil && !lp.synced() {
		return nil, errPodsNotSynced
	}
	pods, err := lp.lister.List(labels.Everything())
	if err != nil {
		return nil, err
	}
	held := map[netip.Addr]bool{}
	for _, p := range pods {
		// A source without field selectors (a lab's store) lists every pod.
		if p.Spec.NodeName != lp.node || p.Spec.HostNetwork || terminal(p) {
			continue
		}
		for _, ip := range p.Status.PodIPs {
			if a, err := netip.ParseAddr(ip.IP); err == nil {
				held[a] = true
			}
		}
	}
	var out []ipam.Allocation
	seen := map[netip.Addr]bool{}
	for _, al := range allocs {
		if held[al.Addr] {
			continue
		}
		seen[al.Addr] = true
		first, ok := lp.since[al.Addr]
		if !ok {
			lp.since[al.Addr] = now
			continue
		}
		if now.Sub(first) >= orphanGrace {
			out = append(out, al)
		}
	}
	for a := range lp.since {
		if !seen[a] {
			delete(lp.since, a)
		}
	}
	return out, nil
}

// terminal pods have given up their sandbox (and their address).
func terminal(p *corev1.Pod) bool {
	return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
}
