package proxy

import (
	"github.com/kdive/kdive/internal/model"
	"net/netip"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"
)

func service(name, ip string, mods ...func(*corev1.Service)) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
		Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeClusterIP, ClusterIP: ip, ClusterIPs: []string{ip},
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt(8080), Protocol: corev1.ProtocolTCP}},
		},
	}
	for _, m := range mods {
		m(s)
	}
	return s
}

func slice(svc, name string, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "default", Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(corev1.ProtocolTCP)}},
		Endpoints:   eps,
	}
}

func endpoint(ip, node string, ready, serving, terminating bool) discoveryv1.Endpoint {
	return discoveryv1.Endpoint{
		Addresses: []string{ip}, NodeName: ptr.To(node), Zone: ptr.To("zone-a"),
		Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(ready), Serving: ptr.To(serving), Terminating: ptr.To(terminating)},
	}
}

func TestServicePortsMergesSlices(t *testing.T) {
	svc := service("web", "10.1.0.2", func(s *corev1.Service) {
		s.Spec.Type = corev1.ServiceTypeLoadBalancer
		s.Spec.Ports[0].NodePort = 30080
		s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
		s.Spec.HealthCheckNodePort = 32000
		s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
		s.Spec.LoadBalancerSourceRanges = []string{"198.51.100.0/24"}
		s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "203.0.113.20"}}
	})
	a := slice("web", "web-a", endpoint("10.0.1.2", "node-1", true, true, false), endpoint("10.0.2.2", "node-2", false, true, true))
	b := slice("web", "web-b", endpoint("10.0.3.2", "node-3", false, false, false), endpoint("10.0.1.2", "node-1", false, false, false))
	other := slice("other", "other-a", endpoint("10.0.9.9", "node-1", true, true, false))
	ports, err := ServicePorts(svc, []*discoveryv1.EndpointSlice{a, b, other})
	if err != nil || len(ports) != 1 {
		t.Fatalf("ports = %+v, %v", ports, err)
	}
	p := ports[0]
	if p.Name.String() != "default/web:http" || p.NodePort != 30080 || !p.ExternalPolicyLocal || p.HealthCheckNodePort != 32000 ||
		p.AffinityTimeout != 10800 || len(p.LoadBalancerIPs) != 1 || p.LoadBalancerSourceRanges[0].String() != "198.51.100.0/24" {
		t.Errorf("port = %+v", p)
	}
	var got []string
	for _, e := range p.Endpoints {
		got = append(got, e.String()+map[bool]string{true: "R", false: ""}[e.Ready]+map[bool]string{true: "T", false: ""}[e.Terminating])
	}
	// 10.0.1.2 is in both slices: the ready copy wins; 10.0.9.9 is another
	// service's.
	if strings.Join(got, " ") != "10.0.1.2:8080R 10.0.2.2:8080T 10.0.3.2:8080" {
		t.Errorf("endpoints = %v", got)
	}
}

// TestServicePortsTerminatingButReady: with publishNotReadyAddresses the
// EndpointSlice controller keeps a terminating pod ready, and it stays in
// use for cluster traffic, as in kube-proxy.
func TestServicePortsTerminatingButReady(t *testing.T) {
	svc := service("web", "10.1.0.2", func(s *corev1.Service) { s.Spec.PublishNotReadyAddresses = true })
	sl := slice("web", "web-a", endpoint("10.0.1.2", "node-1", true, false, true))
	ports, err := ServicePorts(svc, []*discoveryv1.EndpointSlice{sl})
	if err != nil || len(ports) != 1 {
		t.Fatalf("ports = %+v, %v", ports, err)
	}
	p := Resolve(ports[0], model.Node{Name: "node-2"})
	if len(p.Cluster) != 1 || p.Cluster[0].IP.String() != "10.0.1.2" || !p.HasEndpoints {
		t.Errorf("cluster endpoints of a ready terminating pod = %+v, want 10.0.1.2", p.Cluster)
	}
}

// TestServicePortsIgnoredSlices: an EndpointSlice labelled headless or
// another proxy's is not the service's, as kube-proxy's informers never
// see it (upstream's "should implement service.kubernetes.io/headless"
// relabels the only slice and wants the cluster IP to stop answering).
func TestServicePortsIgnoredSlices(t *testing.T) {
	svc := service("web", "10.1.0.2")
	for _, label := range []string{corev1.IsHeadlessService, LabelServiceProxyName} {
		sl := slice("web", "web-a", endpoint("10.0.1.2", "node-1", true, true, false))
		ports, err := ServicePorts(svc, []*discoveryv1.EndpointSlice{sl})
		if err != nil || len(ports) != 1 || len(ports[0].Endpoints) != 1 {
			t.Fatalf("ports = %+v, %v; want one with its endpoint", ports, err)
		}
		sl.Labels[label] = ""
		ports, err = ServicePorts(svc, []*discoveryv1.EndpointSlice{sl})
		if err != nil || len(ports) != 1 || len(ports[0].Endpoints) != 0 {
			t.Errorf("slice labelled %s: ports = %+v, %v; want the port without endpoints", label, ports, err)
		}
	}
}

func TestServicePortsSkipsAndRejects(t *testing.T) {
	for _, c := range []struct {
		svc  *corev1.Service
		want string // "" = skipped without error
	}{
		{service("headless", "None"), ""},
		{service("ext", "", func(s *corev1.Service) { s.Spec.Type = corev1.ServiceTypeExternalName }), ""},
		{service("other-proxy", "10.1.0.3", func(s *corev1.Service) { s.Labels = map[string]string{LabelServiceProxyName: "x"} }), ""},
		{service("empty-proxy-name", "10.1.0.3", func(s *corev1.Service) { s.Labels = map[string]string{LabelServiceProxyName: ""} }), ""},
		{service("marked-headless", "10.1.0.3", func(s *corev1.Service) { s.Labels = map[string]string{corev1.IsHeadlessService: ""} }), ""},
		{service("bad-ip", "10.1.0.300"), `service default/bad-ip: spec.clusterIPs[0]: "10.1.0.300" is not an IP address`},
		{service("bad-proto", "10.1.0.4", func(s *corev1.Service) { s.Spec.Ports[0].Protocol = "ICMP" }), `spec.ports[0].protocol: unsupported protocol "ICMP"`},
		{service("bad-port", "10.1.0.5", func(s *corev1.Service) { s.Spec.Ports[0].Port = 0 }), "spec.ports[0].port: 0 is outside 1-65535"},
		{service("dup", "10.1.0.6", func(s *corev1.Service) { s.Spec.Ports = append(s.Spec.Ports, s.Spec.Ports[0]) }), `spec.ports[1].name: duplicate port "http"`},
		{service("bad-ext", "10.1.0.7", func(s *corev1.Service) { s.Spec.ExternalIPs = []string{"nope"} }), "spec.externalIPs[0]"},
	} {
		ports, err := ServicePorts(c.svc, nil)
		switch {
		case c.want == "" && (err != nil || len(ports) != 0):
			t.Errorf("%s: %v, %v; want skipped", c.svc.Name, ports, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: error %v, want %q", c.svc.Name, err, c.want)
		}
	}
}

type fixture struct {
	svcs, slices cache.Indexer
	tr           *Tracker
	node         model.Node
}

func newFixture() *fixture {
	f := &fixture{
		svcs:   cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc}),
		slices: cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc}),
		node:   model.Node{Name: "node-1", Zone: "zone-a", IPs: []netip.Addr{netip.MustParseAddr("172.20.1.10")}},
	}
	f.tr = NewTracker(corelisters.NewServiceLister(f.svcs), discoverylisters.NewEndpointSliceLister(f.slices))
	return f
}

func names(d *Desired) string {
	var out []string
	for _, p := range d.Services {
		out = append(out, p.Name.String())
	}
	return strings.Join(out, " ")
}

func changed(d *Desired) string {
	var out []string
	for n := range d.Changed {
		out = append(out, n.String())
	}
	slices.Sort(out)
	return strings.Join(out, " ")
}

func TestTrackerTracksChanges(t *testing.T) {
	f := newFixture()
	must(t, f.svcs.Add(service("web", "10.1.0.2")))
	must(t, f.svcs.Add(service("api", "10.1.0.3")))
	must(t, f.svcs.Add(service("bad", "bogus")))
	must(t, f.slices.Add(slice("web", "web-a", endpoint("10.0.1.2", "node-1", true, true, false))))
	if err := f.tr.MarkAll(); err != nil {
		t.Fatal(err)
	}
	d, errs := f.tr.Desired(f.node, Config{}, true)
	if names(d) != "default/api:http default/web:http" || d.Changed != nil {
		t.Errorf("first: services %q, changed %v", names(d), d.Changed)
	}
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), "service default/bad: spec.clusterIPs[0]") {
		t.Errorf("errors = %v", errs)
	}
	if len(d.Services[1].Cluster) != 1 || d.Services[1].Cluster[0].NodeName != "node-1" {
		t.Errorf("web's endpoints = %+v", d.Services[1].Cluster)
	}

	// Nothing changed: an empty Changed set.
	d, _ = f.tr.Desired(f.node, Config{}, false)
	if d.Changed == nil || len(d.Changed) != 0 || names(d) != "default/api:http default/web:http" {
		t.Errorf("no-op: changed %v, services %q", d.Changed, names(d))
	}

	// A slice changes: only its service changed.
	must(t, f.slices.Update(slice("web", "web-a", endpoint("10.0.1.2", "node-1", true, true, false), endpoint("10.0.2.2", "node-2", true, true, false))))
	f.tr.SliceChanged(slice("web", "web-a"))
	d, _ = f.tr.Desired(f.node, Config{}, false)
	if changed(d) != "default/web:http" || len(d.Services[1].Cluster) != 2 {
		t.Errorf("slice change: changed %q, web %+v", changed(d), d.Services[1])
	}

	// A port renamed and a service deleted: old and new names changed.
	must(t, f.svcs.Update(service("api", "10.1.0.3", func(s *corev1.Service) { s.Spec.Ports[0].Name = "grpc" })))
	f.tr.ServiceChanged("default", "api")
	must(t, f.svcs.Delete(service("web", "10.1.0.2")))
	f.tr.ServiceChanged("default", "web")
	d, _ = f.tr.Desired(f.node, Config{}, false)
	if changed(d) != "default/api:grpc default/api:http default/web:http" || names(d) != "default/api:grpc" {
		t.Errorf("rename+delete: changed %q, services %q", changed(d), names(d))
	}

	// The bad service is fixed: served from then on, error gone.
	must(t, f.svcs.Update(service("bad", "10.1.0.9")))
	f.tr.ServiceChanged("default", "bad")
	d, errs = f.tr.Desired(f.node, Config{}, false)
	if len(errs) != 0 || names(d) != "default/api:grpc default/bad:http" {
		t.Errorf("fixed: errors %v, services %q", errs, names(d))
	}

	// Another node identity: a full snapshot.
	f.node.Zone = "zone-b"
	if d, _ = f.tr.Desired(f.node, Config{}, false); d.Changed != nil {
		t.Errorf("node change did not give a full snapshot: %v", d.Changed)
	}
}

// TestTrackerIsTheChangeDetector: the backends trust Changed, so the
// tracker must name exactly what differs: a resync that re-reads every
// service reports none when nothing changed, an update that changes
// nothing a backend uses reports none, and a change of any endpoint field
// or of the settings is seen.
func TestTrackerIsTheChangeDetector(t *testing.T) {
	f := newFixture()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(f.svcs.Add(service("web", "10.1.0.2")))
	must(f.slices.Add(slice("web", "web-a", endpoint("10.0.1.2", "node-1", true, true, false))))
	must(f.tr.MarkAll())
	f.tr.Desired(f.node, Config{}, false)

	must(f.tr.MarkAll())
	d, _ := f.tr.Desired(f.node, Config{}, true)
	if !d.Resync || d.Changed == nil || len(d.Changed) != 0 || !d.Full() {
		t.Errorf("resync of an unchanged state: resync %v, changed %v", d.Resync, d.Changed)
	}

	// An annotation: nothing the proxy uses.
	must(f.svcs.Update(service("web", "10.1.0.2", func(s *corev1.Service) { s.Annotations = map[string]string{"x": "y"} })))
	f.tr.ServiceChanged("default", "web")
	if d, _ = f.tr.Desired(f.node, Config{}, false); len(d.Changed) != 0 || d.Full() {
		t.Errorf("an annotation changed %v", d.Changed)
	}

	// An endpoint going terminating: seen.
	must(f.slices.Update(slice("web", "web-a", endpoint("10.0.1.2", "node-1", true, true, true))))
	f.tr.SliceChanged(slice("web", "web-a"))
	if d, _ = f.tr.Desired(f.node, Config{}, false); changed(d) != "default/web:http" {
		t.Errorf("terminating endpoint: changed %q", changed(d))
	}

	// Other settings: every port resolves anew.
	if d, _ = f.tr.Desired(f.node, Config{MasqueradeAll: true}, false); d.Changed != nil || !d.Full() {
		t.Errorf("a settings change gave changed %v", d.Changed)
	}
	if d, _ = f.tr.Desired(f.node, Config{MasqueradeAll: true}, false); d.Changed == nil {
		t.Errorf("the same settings again: changed nil")
	}
}

// must fails the test at a setup step that failed.
func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
