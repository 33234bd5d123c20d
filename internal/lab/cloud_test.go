package lab

import (
	"context"
	"maps"
	"net/netip"
	"slices"
	"testing"

	"github.com/kdive/kdive/internal/source/labstore"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

// The lab cloud's service controller follows a cloud's: a LoadBalancer
// Service gets the cleanup finalizer and an address of the pool; one that
// changes type or is being deleted has its address released and then its
// finalizer removed (upstream's e2e "should handle load balancer cleanup
// finalizer for service" found the finalizer missing).
func TestReconcileLoadBalancers(t *testing.T) {
	ctx := context.Background()
	pool := netip.MustParsePrefix("203.0.113.0/24")
	svc := func(name string, typ corev1.ServiceType) *corev1.Service {
		return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name}, Spec: corev1.ServiceSpec{Type: typ}}
	}
	cs := fake.NewClientset(svc("a", corev1.ServiceTypeLoadBalancer), svc("b", corev1.ServiceTypeLoadBalancer), svc("c", corev1.ServiceTypeClusterIP))
	reconcile := func() map[string]corev1.Service {
		t.Helper()
		list, err := cs.CoreV1().Services("").List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var all []*corev1.Service
		for i := range list.Items {
			all = append(all, &list.Items[i])
		}
		got, errs := reconcileLoadBalancers(ctx, cs, pool, all)
		if len(errs) > 0 {
			t.Fatal(errs)
		}
		out := map[string]corev1.Service{}
		for _, s := range got {
			out[s.Name] = s
		}
		// What the API holds is what was returned.
		for name, s := range out {
			inAPI, err := cs.CoreV1().Services("default").Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(inAPI.Finalizers, s.Finalizers) {
				t.Errorf("%s: API finalizers %v, returned %v", name, inAPI.Finalizers, s.Finalizers)
			}
		}
		return out
	}
	// change edits Service name in the API, as a user would.
	change := func(name string, edit func(*corev1.Service)) {
		t.Helper()
		s, err := cs.CoreV1().Services("default").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		edit(s)
		if _, err := cs.CoreV1().Services("default").Update(ctx, s, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	check := func(s corev1.Service, finalizer bool, ip string) {
		t.Helper()
		if got := slices.Contains(s.Finalizers, lbCleanupFinalizer); got != finalizer {
			t.Errorf("%s: finalizer %v, want %v (%v)", s.Name, got, finalizer, s.Finalizers)
		}
		var got string
		if ing := s.Status.LoadBalancer.Ingress; len(ing) > 0 {
			got = ing[0].IP
		}
		if got != ip {
			t.Errorf("%s: ingress IP %q, want %q", s.Name, got, ip)
		}
	}

	got := reconcile()
	check(got["a"], true, "203.0.113.1")
	check(got["b"], true, "203.0.113.2")
	check(got["c"], false, "")

	// a becomes a ClusterIP Service: released, then the finalizer goes;
	// its address is free again for c, now a LoadBalancer.
	change("a", func(s *corev1.Service) { s.Spec.Type = corev1.ServiceTypeClusterIP })
	got = reconcile()
	check(got["a"], false, "")
	if st, err := cs.CoreV1().Services("default").Get(ctx, "a", metav1.GetOptions{}); err != nil || len(st.Status.LoadBalancer.Ingress) != 0 {
		t.Errorf("a's status in the API after the change: %+v, %v", st.Status.LoadBalancer, err)
	}
	change("c", func(s *corev1.Service) { s.Spec.Type = corev1.ServiceTypeLoadBalancer })
	got = reconcile()
	check(got["c"], true, "203.0.113.1")

	// b is being deleted: released, finalizer removed, no address in what
	// the router is given.
	now := metav1.Now()
	change("b", func(s *corev1.Service) { s.DeletionTimestamp = &now })
	got = reconcile()
	check(got["b"], false, "")
	check(got["c"], true, "203.0.113.1")
}

// The router spreads a service address as a cloud load balancer does:
// over every node (Cluster) or the nodes with a ready endpoint (Local),
// and to one node under ClientIP affinity. Upstream's e2e "should be able
// to switch session affinity for LoadBalancer service with Local traffic
// policy" [Slow] found every address sent to one node, so turning
// affinity off still reached one node's endpoints only.
func TestRouterTargets(t *testing.T) {
	node := func(name, ip string) NodePlan {
		return NodePlan{HostPlan: HostPlan{Name: name, IP: netip.MustParseAddr(ip)}, Subnet: "a"}
	}
	p := &Plan{
		Nodes:   []NodePlan{node("node-1", "172.20.1.11"), node("node-2", "172.20.1.12"), node("node-3", "172.20.1.13")},
		Subnets: []SubnetPlan{{Name: "a", Bridge: "br-a"}},
	}
	svc := func(name, ip string, etp corev1.ServiceExternalTrafficPolicy, aff corev1.ServiceAffinity) corev1.Service {
		return corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
			Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, ExternalTrafficPolicy: etp, SessionAffinity: aff},
			Status:     corev1.ServiceStatus{LoadBalancer: corev1.LoadBalancerStatus{Ingress: []corev1.LoadBalancerIngress{{IP: ip}}}},
		}
	}
	ready, notReady := true, false
	ep := func(node string, r *bool) discoveryv1.Endpoint {
		return discoveryv1.Endpoint{NodeName: &node, Conditions: discoveryv1.EndpointConditions{Ready: r}}
	}
	slice := func(svc string, eps ...discoveryv1.Endpoint) discoveryv1.EndpointSlice {
		return discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: svc + "-x", Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
			Endpoints:  eps,
		}
	}
	cluster, local := corev1.ServiceExternalTrafficPolicyCluster, corev1.ServiceExternalTrafficPolicyLocal
	none, clientIP := corev1.ServiceAffinityNone, corev1.ServiceAffinityClientIP
	ext := svc("ext", "", cluster, none)
	ext.Status = corev1.ServiceStatus{}
	ext.Spec.ExternalIPs = []string{"198.51.100.50", "2001:db8::1"}
	snap := &labstore.Snapshot{
		Services: []corev1.Service{
			svc("cluster", "203.0.113.1", cluster, none),
			svc("local", "203.0.113.2", local, none),
			svc("local-affinity", "203.0.113.3", local, clientIP),
			svc("cluster-affinity", "203.0.113.4", cluster, clientIP),
			svc("local-no-endpoint", "203.0.113.5", local, none),
			ext,
		},
		EndpointSlices: []discoveryv1.EndpointSlice{
			slice("local", ep("node-3", &ready), ep("node-1", &notReady), ep("node-2", &ready)),
			slice("local-affinity", ep("node-3", &ready), ep("node-2", &ready)),
			slice("local-no-endpoint", ep("node-2", &notReady)),
			slice("cluster", ep("node-1", &ready)),
		},
	}
	got := map[string][]string{}
	for a, nodes := range p.routerTargets(snap) {
		for _, n := range nodes {
			got[a.String()] = append(got[a.String()], n.Name)
		}
	}
	want := map[string][]string{
		"203.0.113.1":   {"node-1", "node-2", "node-3"},
		"203.0.113.2":   {"node-2", "node-3"},
		"203.0.113.3":   {"node-2"},
		"203.0.113.4":   {"node-1"},
		"203.0.113.5":   {"node-1"},
		"198.51.100.50": {"node-1", "node-2", "node-3"},
	}
	if !maps.EqualFunc(got, want, slices.Equal) {
		t.Errorf("router targets = %v\nwant %v", got, want)
	}
	one := p.routeToNodes(netip.MustParseAddr("203.0.113.3"), p.Nodes[1:2])
	if one.String() != "203.0.113.3/32 via 172.20.1.12 dev br-a proto 109" {
		t.Errorf("route to one node = %s", one)
	}
	many := p.routeToNodes(netip.MustParseAddr("203.0.113.2"), p.Nodes[1:])
	if many.String() != "203.0.113.2/32 nexthop via 172.20.1.12 dev br-a nexthop via 172.20.1.13 dev br-a proto 109" {
		t.Errorf("route to two nodes = %s", many)
	}
}
