package lab

import (
	"context"
	"net/netip"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
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
