package proxy

import (
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/utils/ptr"
)

// Bad input from the API server (or from whatever writes to it): each bad
// object is left out with an error naming it and the field, or skipped
// when kube-proxy skips it too, and every other service is still served.

// TestBadServicesAreReported: a service the API server should have refused
// gives no ports and an error naming the service and the field; the
// services next to it are programmed.
func TestBadServicesAreReported(t *testing.T) {
	bad := []struct {
		svc  *corev1.Service
		want string
	}{
		{service("ip-range", "10.1.0.300"), `service default/ip-range: spec.clusterIPs[0]: "10.1.0.300" is not an IP address`},
		{service("ip-zeros", "010.001.000.011"), `service default/ip-zeros: spec.clusterIPs[0]: "010.001.000.011" is not an IP address`},
		{service("ip-second", "10.1.0.12", func(s *corev1.Service) { s.Spec.ClusterIPs = append(s.Spec.ClusterIPs, "fd00::zz") }),
			`service default/ip-second: spec.clusterIPs[1]: "fd00::zz" is not an IP address`},
		{service("ext-ip", "10.1.0.13", func(s *corev1.Service) { s.Spec.ExternalIPs = []string{"192.0.2.1", "192.0.2.0/24"} }),
			`service default/ext-ip: spec.externalIPs[1]: "192.0.2.0/24" is not an IP address`},
		{service("lb-ip", "10.1.0.14", func(s *corev1.Service) {
			s.Spec.Type = corev1.ServiceTypeLoadBalancer
			s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "203.0.113.256"}}
		}), `service default/lb-ip: status.loadBalancer.ingress[0].ip: "203.0.113.256" is not an IP address`},
		{service("lb-range", "10.1.0.15", func(s *corev1.Service) {
			s.Spec.Type = corev1.ServiceTypeLoadBalancer
			s.Spec.LoadBalancerSourceRanges = []string{"198.51.100.0/33"}
		}), `service default/lb-range: spec.loadBalancerSourceRanges[0]: "198.51.100.0/33" is not a CIDR`},
		{service("port-big", "10.1.0.16", func(s *corev1.Service) { s.Spec.Ports[0].Port = 65536 }),
			"service default/port-big: spec.ports[0].port: 65536 is outside 1-65535"},
		{service("port-neg", "10.1.0.17", func(s *corev1.Service) { s.Spec.Ports[0].Port = -80 }),
			"service default/port-neg: spec.ports[0].port: -80 is outside 1-65535"},
		{service("node-port", "10.1.0.18", func(s *corev1.Service) {
			s.Spec.Type = corev1.ServiceTypeNodePort
			s.Spec.Ports[0].NodePort = 70000
		}), "service default/node-port: spec.ports[0].nodePort: 70000 is outside 0-65535"},
		{service("hc-port", "10.1.0.19", func(s *corev1.Service) {
			s.Spec.Type = corev1.ServiceTypeLoadBalancer
			s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
			s.Spec.HealthCheckNodePort = 70000
		}), "service default/hc-port: spec.healthCheckNodePort: 70000 is outside 0-65535"},
		{service("affinity", "10.1.0.20", func(s *corev1.Service) {
			s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
			s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](0)}}
		}), "service default/affinity: spec.sessionAffinityConfig.clientIP.timeoutSeconds: 0 is outside 1-86400"},
		{service("proto", "10.1.0.21", func(s *corev1.Service) { s.Spec.Ports[0].Protocol = "icmp" }),
			`service default/proto: spec.ports[0].protocol: unsupported protocol "icmp"`},
		{service("dup", "10.1.0.22", func(s *corev1.Service) {
			s.Spec.Ports = append(s.Spec.Ports, s.Spec.Ports[0])
			s.Spec.Ports[1].Port = 81
		}), `service default/dup: spec.ports[1].name: duplicate port "http" for TCP`},
		// Names Kubernetes refuses, which would otherwise reach rule
		// comments (iptables-restore's input, nft's) as they are.
		{service("quote\" -j ACCEPT", "10.1.0.23"), `service "default/quote\" -j ACCEPT": metadata.name: a DNS-1035 label must consist of`},
		{service("new\nline", "10.1.0.24"), `service "default/new\nline": metadata.name: a DNS-1035 label`},
		{service("1digit", "10.1.0.25"), `service "default/1digit": metadata.name: a DNS-1035 label`},
		{service("ns", "10.1.0.26", func(s *corev1.Service) { s.Namespace = "Kube System" }), `service "Kube System/ns": metadata.namespace: a lowercase RFC 1123 label`},
		{service("port-name", "10.1.0.27", func(s *corev1.Service) { s.Spec.Ports[0].Name = `h"ttp` }),
			`service default/port-name: spec.ports[0].name: "h\"ttp": a lowercase RFC 1123 label`},
	}
	f := newFixture()
	must(t, f.svcs.Add(service("good", "10.1.0.2")))
	must(t, f.slices.Add(slice("good", "good-a", endpoint("10.0.1.2", "node-1", true, true, false))))
	for _, c := range bad {
		must(t, f.svcs.Add(c.svc))
		must(t, f.slices.Add(slice(c.svc.Name, c.svc.Name+"-a", endpoint("10.0.1.3", "node-1", true, true, false))))
	}
	if err := f.tr.MarkAll(); err != nil {
		t.Fatal(err)
	}
	d, errs := f.tr.Desired(f.node, Config{}, true)
	if names(d) != "default/good:http" || len(d.Services[0].Cluster) != 1 {
		t.Errorf("served %q, want only default/good:http with its endpoint", names(d))
	}
	for _, c := range bad {
		// The error, or its beginning (validation's own words follow).
		if !slices.ContainsFunc(errs, func(err error) bool { return strings.HasPrefix(err.Error(), c.want) }) {
			t.Errorf("no error %q; errors:\n%s", c.want, joinErrs(errs))
		}
	}
	if len(errs) != len(bad) {
		t.Errorf("%d errors for %d bad services:\n%s", len(errs), len(bad), joinErrs(errs))
	}
}

func joinErrs(errs []error) string {
	var b strings.Builder
	for _, e := range errs {
		b.WriteString("  " + e.Error() + "\n")
	}
	return b.String()
}

// TestSlicesOfUnknownServices: an EndpointSlice whose service does not
// exist (yet, or any more) is ignored without an error, as kube-proxy
// ignores it; when the service appears its endpoints are used.
func TestSlicesOfUnknownServices(t *testing.T) {
	f := newFixture()
	must(t, f.svcs.Add(service("web", "10.1.0.2")))
	must(t, f.slices.Add(slice("web", "web-a", endpoint("10.0.1.2", "node-1", true, true, false))))
	ghost := slice("ghost", "ghost-a", endpoint("10.0.1.9", "node-1", true, true, false))
	must(t, f.slices.Add(ghost))
	unlabelled := slice("", "orphan", endpoint("10.0.1.8", "node-1", true, true, false))
	unlabelled.Labels = nil
	must(t, f.slices.Add(unlabelled))
	if err := f.tr.MarkAll(); err != nil {
		t.Fatal(err)
	}
	f.tr.SliceChanged(ghost)
	f.tr.SliceChanged(unlabelled)
	d, errs := f.tr.Desired(f.node, Config{}, true)
	if len(errs) != 0 || names(d) != "default/web:http" || len(d.Services[0].Cluster) != 1 {
		t.Fatalf("services %q, errors %v; want default/web:http only, no error", names(d), errs)
	}
	// The service appears: its slice's endpoint is served.
	must(t, f.svcs.Add(service("ghost", "10.1.0.9")))
	f.tr.ServiceChanged("default", "ghost")
	d, errs = f.tr.Desired(f.node, Config{}, false)
	if len(errs) != 0 || names(d) != "default/ghost:http default/web:http" || len(d.Services[0].Cluster) != 1 {
		t.Errorf("after the service appeared: services %q, errors %v", names(d), errs)
	}
}

// TestBadEndpointsAreSkipped: endpoints and slices a service cannot use
// (not IPv4, malformed addresses, ports out of range, other address
// types) are skipped, and the good endpoints of the same slice served.
func TestBadEndpointsAreSkipped(t *testing.T) {
	svc := service("web", "10.1.0.2")
	good := endpoint("10.0.1.2", "node-1", true, true, false)
	noAddr := endpoint("", "node-1", true, true, false)
	noAddr.Addresses = nil
	a := slice("web", "web-a", good, endpoint("10.0.1.300", "node-1", true, true, false),
		endpoint("fd00::2", "node-1", true, true, false), endpoint("10.0.1.3/32", "node-1", true, true, false), noAddr)
	big := slice("web", "web-port", endpoint("10.0.1.4", "node-1", true, true, false))
	big.Ports[0].Port = ptr.To[int32](70000)
	nilPort := slice("web", "web-nil", endpoint("10.0.1.5", "node-1", true, true, false))
	nilPort.Ports[0].Port = nil
	fqdn := slice("web", "web-fqdn", endpoint("example.com", "node-1", true, true, false))
	fqdn.AddressType = discoveryv1.AddressTypeFQDN
	ports, err := ServicePorts(svc, []*discoveryv1.EndpointSlice{a, big, nilPort, fqdn})
	if err != nil || len(ports) != 1 {
		t.Fatalf("ports %+v, %v", ports, err)
	}
	if eps := ports[0].Endpoints; len(eps) != 1 || eps[0].String() != "10.0.1.2:8080" {
		t.Errorf("endpoints %v, want only 10.0.1.2:8080", eps)
	}
}

// TestHugeService: one service with 100,000 endpoints (in 100 slices of
// 1,000, the API server's maximum per slice) next to an ordinary one:
// both are served, in bounded time, and a change to the small one does
// not recompute the big one.
func TestHugeService(t *testing.T) {
	if testing.Short() {
		t.Skip("builds 100,000 endpoints")
	}
	const slices, perSlice = 100, 1000
	f := newFixture()
	must(t, f.svcs.Add(service("huge", "10.1.0.2")))
	must(t, f.svcs.Add(service("small", "10.1.0.3")))
	must(t, f.slices.Add(slice("small", "small-a", endpoint("10.0.1.2", "node-1", true, true, false))))
	for s := range slices {
		eps := make([]discoveryv1.Endpoint, perSlice)
		for i := range eps {
			n := s*perSlice + i
			ip := netip.AddrFrom4([4]byte{10, byte(2 + n>>16), byte(n >> 8), byte(n)})
			eps[i] = endpoint(ip.String(), fmt.Sprintf("node-%d", n%100), true, true, false)
		}
		must(t, f.slices.Add(slice("huge", fmt.Sprintf("huge-%03d", s), eps...)))
	}
	if err := f.tr.MarkAll(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	d, errs := f.tr.Desired(f.node, Config{}, true)
	took := time.Since(start)
	if len(errs) != 0 || names(d) != "default/huge:http default/small:http" {
		t.Fatalf("services %q, errors %v", names(d), errs)
	}
	if n := len(d.Services[0].Cluster); n != slices*perSlice {
		t.Errorf("huge has %d cluster endpoints, want %d", n, slices*perSlice)
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	t.Logf("100,000 endpoints: Desired in %v, heap %d MiB", took, ms.HeapAlloc>>20)
	if took > 20*time.Second {
		t.Errorf("Desired took %v", took)
	}
	// The small service changes: only it is recomputed.
	must(t, f.slices.Update(slice("small", "small-a", endpoint("10.0.1.2", "node-1", true, true, false), endpoint("10.0.1.3", "node-1", true, true, false))))
	f.tr.SliceChanged(slice("small", "small-a"))
	start = time.Now()
	d, _ = f.tr.Desired(f.node, Config{}, false)
	if changed(d) != "default/small:http" || len(d.Services[1].Cluster) != 2 {
		t.Errorf("changed %q, small %+v", changed(d), d.Services[1].Cluster)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("a change to the small service took %v", took)
	}
}

// TestNestedSourceRanges: loadBalancerSourceRanges inside one another
// (valid, but redundant) are served as their union's outermost ranges,
// which is what an nftables interval set holds and reads back.
func TestNestedSourceRanges(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"198.51.100.7/32 198.51.0.0/16 198.51.100.0/24 10.0.0.1/8 10.0.0.0/8", "10.0.0.0/8 198.51.0.0/16"},
		{"172.20.0.0/16 0.0.0.0/0", "0.0.0.0/0"},
		{"192.0.2.0/24 fd00::/8", "192.0.2.0/24"},
	} {
		svc := service("lb", "10.1.0.2", func(s *corev1.Service) {
			s.Spec.Type = corev1.ServiceTypeLoadBalancer
			s.Spec.LoadBalancerSourceRanges = strings.Fields(c.in)
			s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "203.0.113.20"}}
		})
		ports, err := ServicePorts(svc, nil)
		if err != nil || len(ports) != 1 {
			t.Fatalf("%s: %v, %v", c.in, ports, err)
		}
		var got []string
		for _, r := range ports[0].LoadBalancerSourceRanges {
			got = append(got, r.String())
		}
		if strings.Join(got, " ") != c.want {
			t.Errorf("ranges %s served as %v, want %s", c.in, got, c.want)
		}
	}
}
