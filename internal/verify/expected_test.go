package verify

import (
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/kdive/kdive/internal/lab"
	"github.com/kdive/kdive/internal/source/labstore"
)

func testPlan(t *testing.T) *lab.Plan {
	t.Helper()
	p, _, err := lab.Prepare("vfyu", lab.Source{Preset: "D"})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func node(name, ip, zone string) corev1.Node {
	return corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{corev1.LabelTopologyZone: zone}},
		Status:     corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}}},
	}
}

func endpoint(ip, node string) discoveryv1.Endpoint {
	return discoveryv1.Endpoint{Addresses: []string{ip}, NodeName: ptr.To(node), Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}
}

// The expected tables follow the agent: NodePorts on each node's own IP,
// and under externalTrafficPolicy Local only that node's endpoints for
// outside traffic, all of them for cluster IPs.
func TestExpectedTables(t *testing.T) {
	p := testPlan(t)
	snap := &labstore.Snapshot{
		Nodes: []corev1.Node{node("node-1", "172.20.1.10", "zone-a"), node("node-2", "172.20.1.11", "zone-a")},
		Services: []corev1.Service{{
			ObjectMeta: metav1.ObjectMeta{Namespace: Namespace, Name: "lb-local"},
			Spec: corev1.ServiceSpec{
				Type: corev1.ServiceTypeLoadBalancer, ClusterIP: "10.1.0.20", ClusterIPs: []string{"10.1.0.20"},
				ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal, HealthCheckNodePort: 30001,
				LoadBalancerSourceRanges: []string{"198.51.100.10/32"},
				Ports:                    []corev1.ServicePort{{Name: "http", Port: 80, NodePort: 30002, Protocol: corev1.ProtocolTCP}},
			},
			Status: corev1.ServiceStatus{LoadBalancer: corev1.LoadBalancerStatus{Ingress: []corev1.LoadBalancerIngress{{IP: "203.0.113.1"}}}},
		}},
		EndpointSlices: []discoveryv1.EndpointSlice{{
			ObjectMeta:  metav1.ObjectMeta{Namespace: Namespace, Name: "lb-local-0", Labels: map[string]string{discoveryv1.LabelServiceName: "lb-local"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(corev1.ProtocolTCP)}},
			Endpoints:   []discoveryv1.Endpoint{endpoint("10.0.1.2", "node-1"), endpoint("10.0.2.2", "node-2")},
		}},
	}
	tables := expectedTables(p, snap)
	if len(tables) != 2 {
		t.Fatalf("tables for %d nodes, want 2", len(tables))
	}
	t2 := tables["node-2"]
	if t2.Mode != "nftables" || len(t2.Cluster) != 1 || t2.Cluster[0] != netip.MustParsePrefix("10.0.0.0/16") {
		t.Errorf("node-2 table settings: %+v", t2)
	}
	if len(t2.Services) != 1 {
		t.Fatalf("node-2 services: %+v", t2.Services)
	}
	s := t2.Services[0]
	var addrs []string
	for _, a := range s.Addresses {
		addrs = append(addrs, string(a.Kind)+" "+a.Addr.String())
	}
	if got := strings.Join(addrs, ", "); got != "ClusterIP 10.1.0.20:80, LoadBalancer 203.0.113.1:80, NodePort 172.20.1.11:30002" {
		t.Errorf("node-2 addresses: %s", got)
	}
	if len(s.Internal) != 2 || len(s.External) != 1 || s.External[0].Addr.String() != "10.0.2.2:8080" || s.External[0].Probability != 1 {
		t.Errorf("node-2 endpoints: internal %+v, external %+v", s.Internal, s.External)
	}
	if !s.ExternalPolicyLocal || len(s.SourceRanges) != 1 {
		t.Errorf("node-2 policy and ranges: %+v", s)
	}
	// A table equal to the expected one compares clean; one without the
	// service names it.
	if d := compareTables(tables["node-1"], expectedTables(p, snap)["node-1"]); len(d) != 0 {
		t.Errorf("equal tables differ: %v", d)
	}
	if d := compareTables(nil, tables["node-1"]); len(d) != 1 || !strings.Contains(d[0], "kdive-verify/lb-local:http/TCP: not programmed") {
		t.Errorf("empty table: %v", d)
	}
}

func TestWorkloadYAML(t *testing.T) {
	p := testPlan(t)
	spec := workloadSpec{External: p.External.IP}
	for _, n := range p.Nodes {
		spec.Nodes = append(spec.Nodes, n.Name)
	}
	y := string(workloadYAML(spec))
	docs, err := lab.SplitYAML([]byte(y))
	// Six echo pods round the nodes, local-0 on the first, five Services.
	if err != nil || len(docs) != 12 {
		t.Fatalf("workload: %d documents, %v\n%s", len(docs), err, y)
	}
	for _, want := range []string{"name: echo-5,", "name: local-0,", "nodeName: node-1", "nodeName: node-3",
		"[198.51.100.10/32]", "[198.51.100.11/32]", "externalTrafficPolicy: Local"} {
		if !strings.Contains(y, want) {
			t.Errorf("workload lacks %q", want)
		}
	}
	// On a cluster: a host-network pod per node, no source ranges, no
	// lb-closed.
	spec.External, spec.Hosts = netip.Addr{}, true
	y = string(workloadYAML(spec))
	docs, err = lab.SplitYAML([]byte(y))
	if err != nil || len(docs) != 14 {
		t.Fatalf("cluster workload: %d documents, %v\n%s", len(docs), err, y)
	}
	for _, want := range []string{"name: host-2,", "hostNetwork: true", "name: lb-local,"} {
		if !strings.Contains(y, want) {
			t.Errorf("cluster workload lacks %q", want)
		}
	}
	for _, unwanted := range []string{"loadBalancerSourceRanges", "lb-closed"} {
		if strings.Contains(y, unwanted) {
			t.Errorf("cluster workload has %q", unwanted)
		}
	}
}
