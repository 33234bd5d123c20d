// Package proxytest is the packet-flow case table every proxy backend must
// pass: one node's services (Fixture) and packets with the verdict
// kube-proxy's semantics give them. A backend's test renders the fixture,
// traces each packet through its rendered rules (without root, without the
// kernel) and hands the result to Run, which compares. Package bed sends
// the same cases through the kernel as real connections.
package proxytest

import (
	"net/netip"
	"sort"
	"testing"

	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy"
)

// The packet and verdict types live in package proxy (backends' tracers
// are product code and must not import this test package).
type (
	Packet  = proxy.Packet
	Verdict = proxy.Verdict
	Result  = proxy.Result
)

const (
	DNAT   = proxy.DNAT
	DROP   = proxy.DROP
	REJECT = proxy.REJECT
	ACCEPT = proxy.ACCEPT
)

// Tracer renders d in one backend and traces p through the rendered rules.
type Tracer func(t *testing.T, d *proxy.Desired, p Packet) Result

// Addresses of the fixture: node-1 (zone-a) runs the proxy; pods on node-1
// are 10.0.1.x, on node-2 (zone-a) 10.0.2.x, on node-3 (zone-b) 10.0.3.x.
var (
	NodeIP     = netip.MustParseAddr("172.20.1.10")
	ExternalIP = netip.MustParseAddr("198.51.100.10") // a client outside, in the LB source range
	Stranger   = netip.MustParseAddr("192.0.2.99")    // a client outside, not in it
	LocalPod   = netip.MustParseAddr("10.0.1.9")      // a pod on node-1 that is no endpoint
)

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }

func ep(addr string, port int, node string, mods ...func(*model.Endpoint)) model.Endpoint {
	zone := map[string]string{"node-1": "zone-a", "node-2": "zone-a", "node-3": "zone-b"}[node]
	e := model.Endpoint{IP: ip(addr), Port: port, NodeName: node, Zone: zone, Ready: true, Serving: true}
	for _, m := range mods {
		m(&e)
	}
	return e
}

func terminating(serving bool) func(*model.Endpoint) {
	return func(e *model.Endpoint) { e.Ready, e.Serving, e.Terminating = false, serving, true }
}

func hinted(e *model.Endpoint) { e.ZoneHints = []string{e.Zone} }

func nodeHinted(e *model.Endpoint) { e.ZoneHints, e.NodeHints = []string{e.Zone}, []string{e.NodeName} }

func port(ns, name, portName string, proto model.Protocol, clusterIP string, p int, eps ...model.Endpoint) model.ServicePort {
	return model.ServicePort{
		Name:       model.ServicePortName{Namespace: ns, Name: name, Port: portName, Protocol: proto},
		ClusterIPs: []netip.Addr{ip(clusterIP)}, Port: p, Endpoints: eps,
	}
}

// Fixture is the node and services the cases run against.
func Fixture() *proxy.Desired {
	node := model.Node{Name: "node-1", Zone: "zone-a", IPs: []netip.Addr{NodeIP}}
	cfg := proxy.Config{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16")}}

	web := port("default", "web", "http", model.ProtocolTCP, "10.1.0.2", 80,
		ep("10.0.1.2", 8080, "node-1"), ep("10.0.2.2", 8080, "node-2"), ep("10.0.3.2", 8080, "node-3"))
	web.NodePort = 30080
	web.ExternalIPs = []netip.Addr{ip("203.0.113.10")}
	webTLS := port("default", "web", "https", model.ProtocolTCP, "10.1.0.2", 443,
		ep("10.0.1.2", 8443, "node-1"), ep("10.0.2.2", 8443, "node-2"), ep("10.0.3.2", 8443, "node-3"))

	dnsUDP := port("kube-system", "kube-dns", "dns", model.ProtocolUDP, "10.1.0.10", 53,
		ep("10.0.1.3", 53, "node-1"), ep("10.0.2.3", 53, "node-2"))
	dnsTCP := port("kube-system", "kube-dns", "dns-tcp", model.ProtocolTCP, "10.1.0.10", 53,
		ep("10.0.1.3", 53, "node-1"), ep("10.0.2.3", 53, "node-2"))

	empty := port("default", "empty", "", model.ProtocolTCP, "10.1.0.3", 80)
	empty.NodePort = 30081

	local := port("default", "local", "", model.ProtocolTCP, "10.1.0.4", 80,
		ep("10.0.1.4", 8080, "node-1"), ep("10.0.3.4", 8080, "node-3"))
	local.NodePort = 30082
	local.ExternalPolicyLocal = true
	local.HealthCheckNodePort = 32000
	local.LoadBalancerIPs = []netip.Addr{ip("203.0.113.20")}
	local.LoadBalancerSourceRanges = []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}

	localNone := port("default", "local-none", "", model.ProtocolTCP, "10.1.0.5", 80, ep("10.0.2.5", 8080, "node-2"))
	localNone.NodePort = 30083
	localNone.ExternalPolicyLocal = true

	itpLocal := port("default", "itp-local", "", model.ProtocolTCP, "10.1.0.6", 80, ep("10.0.2.6", 8080, "node-2"))
	itpLocal.InternalPolicyLocal = true

	affinity := port("default", "affinity", "", model.ProtocolTCP, "10.1.0.7", 80,
		ep("10.0.2.7", 8080, "node-2"), ep("10.0.3.7", 8080, "node-3"))
	affinity.AffinityTimeout = 10800

	term := port("default", "terminating", "", model.ProtocolTCP, "10.1.0.8", 80,
		ep("10.0.2.8", 8080, "node-2", terminating(true)), ep("10.0.3.8", 8080, "node-3", terminating(false)))

	close := port("default", "prefer-close", "", model.ProtocolTCP, "10.1.0.9", 80,
		ep("10.0.2.9", 8080, "node-2", hinted), ep("10.0.3.9", 8080, "node-3", hinted))
	close.PreferClose = true
	// Hints alone decide, as upstream: the topology-mode annotation
	// (Auto) sets them without trafficDistribution.
	auto := port("default", "topology-auto", "", model.ProtocolTCP, "10.1.0.11", 80,
		ep("10.0.2.11", 8080, "node-2", hinted), ep("10.0.3.11", 8080, "node-3", hinted))
	sameNode := port("default", "same-node", "", model.ProtocolTCP, "10.1.0.12", 80,
		ep("10.0.1.12", 8080, "node-1", nodeHinted), ep("10.0.2.12", 8080, "node-2", nodeHinted), ep("10.0.3.12", 8080, "node-3", nodeHinted))

	d := proxy.NewDesired(cfg, node)
	for _, sp := range []model.ServicePort{web, webTLS, dnsUDP, dnsTCP, empty, local, localNone, itpLocal, affinity, term, close, auto, sameNode} {
		d.Services = append(d.Services, proxy.Resolve(sp, node))
	}
	sort.Slice(d.Services, func(i, j int) bool { return d.Services[i].Name.String() < d.Services[j].Name.String() })
	return d
}

// Case is one packet and its expected fate.
type Case struct {
	Name   string
	Packet Packet
	Want   Result
}

func dnat(masq bool, eps ...string) Result {
	r := Result{Verdict: DNAT, Endpoints: map[string]bool{}}
	for _, e := range eps {
		r.Endpoints[e] = masq
	}
	return r
}

func tcp(src netip.Addr, dst string, p int) Packet {
	return Packet{Src: src, Proto: model.ProtocolTCP, Dst: ip(dst), Port: p}
}

func fromNode(p Packet) Packet { p.FromNode = true; return p }

// Cases are the packets every backend must handle alike.
func Cases() []Case {
	webEPs := []string{"10.0.1.2:8080", "10.0.2.2:8080", "10.0.3.2:8080"}
	hairpin := dnat(false, webEPs...)
	hairpin.Endpoints["10.0.1.2:8080"] = true
	udpDNS := tcp(LocalPod, "10.1.0.10", 53)
	udpDNS.Proto = model.ProtocolUDP
	return []Case{
		{"pod to cluster IP", tcp(LocalPod, "10.1.0.2", 80), dnat(false, webEPs...)},
		{"second port of the service", tcp(LocalPod, "10.1.0.2", 443), dnat(false, "10.0.1.2:8443", "10.0.2.2:8443", "10.0.3.2:8443")},
		{"hairpin: a pod to its own service", tcp(ip("10.0.1.2"), "10.1.0.2", 80), hairpin},
		{"node to cluster IP is masqueraded", fromNode(tcp(NodeIP, "10.1.0.2", 80)), dnat(true, webEPs...)},
		{"outside the pod CIDR to cluster IP is masqueraded", tcp(ExternalIP, "10.1.0.2", 80), dnat(true, webEPs...)},
		{"unknown port of a cluster IP is not a service", tcp(LocalPod, "10.1.0.2", 81), Result{Verdict: ACCEPT}},
		{"pod to pod is not service traffic", tcp(LocalPod, "10.0.2.2", 8080), Result{Verdict: ACCEPT}},
		{"UDP port of a service", udpDNS, dnat(false, "10.0.1.3:53", "10.0.2.3:53")},
		{"TCP port with the same number", tcp(LocalPod, "10.1.0.10", 53), dnat(false, "10.0.1.3:53", "10.0.2.3:53")},
		{"NodePort from outside is masqueraded", tcp(ExternalIP, NodeIP.String(), 30080), dnat(true, webEPs...)},
		{"NodePort from the node itself", fromNode(tcp(NodeIP, NodeIP.String(), 30080)), dnat(true, webEPs...)},
		{"no NodePorts on localhost unless enabled", fromNode(tcp(ip("127.0.0.1"), "127.0.0.1", 30080)), Result{Verdict: ACCEPT}},
		{"external IP", tcp(ExternalIP, "203.0.113.10", 80), dnat(true, webEPs...)},
		{"cluster IP without endpoints rejects", tcp(LocalPod, "10.1.0.3", 80), Result{Verdict: REJECT}},
		{"NodePort without endpoints rejects", tcp(ExternalIP, NodeIP.String(), 30081), Result{Verdict: REJECT}},
		{"eTP Local NodePort: local endpoints, source kept", tcp(ExternalIP, NodeIP.String(), 30082), dnat(false, "10.0.1.4:8080")},
		{"eTP Local LoadBalancer IP in the source range", tcp(ExternalIP, "203.0.113.20", 80), dnat(false, "10.0.1.4:8080")},
		{"LoadBalancer IP outside the source ranges drops", tcp(Stranger, "203.0.113.20", 80), Result{Verdict: DROP}},
		{"eTP Local cluster IP uses all endpoints", tcp(LocalPod, "10.1.0.4", 80), dnat(false, "10.0.1.4:8080", "10.0.3.4:8080")},
		{"eTP Local without local endpoints drops outside traffic", tcp(ExternalIP, NodeIP.String(), 30083), Result{Verdict: DROP}},
		{"eTP Local short-circuits pods to cluster endpoints", tcp(LocalPod, NodeIP.String(), 30083), dnat(false, "10.0.2.5:8080")},
		{"eTP Local short-circuits the node, masqueraded", fromNode(tcp(NodeIP, NodeIP.String(), 30083)), dnat(true, "10.0.2.5:8080")},
		{"iTP Local without local endpoints drops", tcp(LocalPod, "10.1.0.6", 80), Result{Verdict: DROP}},
		{"session affinity still balances new clients", tcp(LocalPod, "10.1.0.7", 80), dnat(false, "10.0.2.7:8080", "10.0.3.7:8080")},
		{"serving-terminating fallback", tcp(LocalPod, "10.1.0.8", 80), dnat(false, "10.0.2.8:8080")},
		{"PreferClose keeps to the zone", tcp(LocalPod, "10.1.0.9", 80), dnat(false, "10.0.2.9:8080")},
		{"zone hints keep to the zone without trafficDistribution", tcp(LocalPod, "10.1.0.11", 80), dnat(false, "10.0.2.11:8080")},
		{"PreferSameNode keeps to the node", tcp(LocalPod, "10.1.0.12", 80), dnat(false, "10.0.1.12:8080")},
	}
}

// Run traces every case with trace and compares.
func Run(t *testing.T, trace Tracer) {
	d := Fixture()
	for _, c := range Cases() {
		t.Run(c.Name, func(t *testing.T) {
			got := trace(t, d, c.Packet)
			if got.String() != c.Want.String() {
				t.Errorf("%s:\n got %s\nwant %s", c.Packet, got, c.Want)
			}
		})
	}
}
