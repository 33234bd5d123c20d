package lab

import (
	"strconv"
	"strings"
	"testing"
)

// testLab is a small lab file; cases below edit it to break one thing.
const testLab = `
apiVersion: kdive.dev/v1alpha1
kind: Lab
spec:
  podCIDR: 10.0.0.0/16
  blockSize: 24
  serviceCIDR: 10.1.0.0/16
  podNetwork: {interface: routed, encap: vxlan, encapPolicy: cross-subnet}
  proxy: {mode: nftables}
  subnets:
  - {name: a, cidr: 172.20.1.0/24}
  - {name: b, cidr: 172.20.2.0/24}
  nodes:
  - {name: n1, subnet: a}
  - {name: n2, subnet: a, ip: 172.20.1.50}
  - {name: n3, subnet: b, labels: {zone: b}}
  objects:
  - apiVersion: v1
    kind: Service
    metadata: {name: dns, namespace: kube-system}
    spec:
      clusterIP: 10.1.0.10
      ports: [{port: 53, protocol: UDP}]
  - apiVersion: v1
    kind: Service
    metadata: {name: web}
    spec:
      type: NodePort
      selector: {app: web}
      ports: [{name: http, port: 80}, {name: https, port: 443, nodePort: 30000}]
  - apiVersion: apps/v1
    kind: Deployment
    metadata: {name: web}
    spec:
      replicas: 4
      selector: {matchLabels: {app: web}}
      template:
        metadata: {labels: {app: web}}
        spec: {containers: [{name: echo, image: kdive-echo}]}
  - apiVersion: apps/v1
    kind: Deployment
    metadata: {name: picky}
    spec:
      replicas: 2
      selector: {matchLabels: {app: picky}}
      template:
        metadata: {labels: {app: picky}}
        spec: {nodeSelector: {zone: b}, containers: [{name: echo, image: kdive-echo}]}
  - apiVersion: v1
    kind: Pod
    metadata: {name: pinned}
    spec: {nodeName: n3, containers: [{name: echo, image: kdive-echo}]}
`

func mustPlan(t *testing.T, name, text string) *Plan {
	t.Helper()
	f, err := Parse([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewPlan(name, "", f)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestPresetsAreValid(t *testing.T) {
	if got := strings.Join(Presets(), ","); got != "A,B,C,D" {
		t.Fatalf("presets = %s", got)
	}
	want := map[string][3]string{ // interface, encap+policy, proxy
		"A": {"routed", "ipip/cross-subnet", "ipvs"},
		"B": {"routed", "ipip/always", "iptables"},
		"C": {"bridge", "ipip/cross-subnet", "iptables"},
		"D": {"routed", "vxlan/cross-subnet", "nftables"},
	}
	for _, name := range Presets() {
		p, _, err := Prepare("", Source{Preset: strings.ToLower(name)})
		if err != nil {
			t.Errorf("preset %s: %v", name, err)
			continue
		}
		w := want[name]
		got := [3]string{p.PodNetwork.Interface, p.PodNetwork.Encap + "/" + p.PodNetwork.EncapPolicy, p.Proxy.Mode}
		if got != w || p.Preset != name || p.Name != DefaultName {
			t.Errorf("preset %s = %v (preset %q, name %q), want %v", name, got, p.Preset, p.Name, w)
		}
		if n, ok := p.Node("node-3"); !ok || n.PodCIDR.String() != "10.0.3.0/24" {
			t.Errorf("preset %s: node-3 = %+v, want pod block 10.0.3.0/24", name, n)
		}
		var dns bool
		for _, s := range p.Objects.Services {
			dns = dns || (s.Name == "kube-dns" && s.Spec.ClusterIP == "10.1.0.10")
		}
		if !dns {
			t.Errorf("preset %s has no kube-dns at 10.1.0.10", name)
		}
	}
	if _, err := PresetYAML("E"); err == nil || !strings.Contains(err.Error(), "A, B, C, D") {
		t.Errorf("unknown preset error = %v", err)
	}
}

func TestPlanAddresses(t *testing.T) {
	p := mustPlan(t, "t1", testLab)
	if p.Router.NetNS != "kdive-t1.router" || p.External.NetNS != "kdive-t1.external" {
		t.Errorf("namespaces: router %s, external %s", p.Router.NetNS, p.External.NetNS)
	}
	type node struct{ name, ip, mac, block, gw, ns, port string }
	want := []node{
		{"n1", "172.20.1.10", "02:6b:ac:14:01:0a", "10.0.1.0/24", "172.20.1.1", "kdive-t1.n1", "nd0"},
		{"n2", "172.20.1.50", "02:6b:ac:14:01:32", "10.0.2.0/24", "172.20.1.1", "kdive-t1.n2", "nd1"},
		{"n3", "172.20.2.10", "02:6b:ac:14:02:0a", "10.0.3.0/24", "172.20.2.1", "kdive-t1.n3", "nd2"},
	}
	for i, w := range want {
		n := p.Nodes[i]
		got := node{n.Name, n.IP.String(), n.MAC, n.PodCIDR.String(), n.Gateway.String(), n.NetNS, n.RouterPort}
		if got != w {
			t.Errorf("node %d = %+v, want %+v", i, got, w)
		}
	}
	if p.External.IP.String() != "198.51.100.10" || p.External.Gateway.String() != "198.51.100.1" {
		t.Errorf("external = %+v", p.External)
	}
	if p.Subnets[1].Bridge != "br1" || p.Subnets[1].Gateway.String() != "172.20.2.1" {
		t.Errorf("subnet b = %+v", p.Subnets[1])
	}
	rs := p.routerRuleset().String()
	for _, w := range []string{
		"02:6b:ac:14:01:32 . 172.20.1.50", "02:6b:c6:33:64:0a . 198.51.100.10",
		`counter name "dropped" drop`, "fib daddr type local accept",
	} {
		if !strings.Contains(rs, w) {
			t.Errorf("router ruleset lacks %q:\n%s", w, rs)
		}
	}
}

func TestPlanObjects(t *testing.T) {
	p := mustPlan(t, "t1", testLab)
	o := p.Objects
	var pods []string
	for _, pod := range o.Pods {
		pods = append(pods, pod.Namespace+"/"+pod.Name+"@"+pod.Spec.NodeName)
	}
	// The pinned pod keeps its node; the replicas spread round-robin.
	if got := strings.Join(pods, " "); got != "default/pinned@n3 default/web-0@n1 default/web-1@n2 default/web-2@n3 default/web-3@n1 default/picky-0@n3 default/picky-1@n3" {
		t.Errorf("pods = %s", got)
	}
	if o.Pods[1].Labels["app"] != "web" || o.Pods[1].Kind != "Pod" {
		t.Errorf("expanded pod lost its template: %+v", o.Pods[1].ObjectMeta)
	}
	var svcs []string
	for _, s := range o.Services {
		x := s.Namespace + "/" + s.Name + "=" + s.Spec.ClusterIP
		for _, pt := range s.Spec.Ports {
			x += " " + string(pt.Protocol)
			if pt.NodePort != 0 {
				x += ":" + strconv.Itoa(int(pt.NodePort))
			}
		}
		svcs = append(svcs, x)
	}
	// Explicit cluster IPs and node ports are kept and never handed out again.
	if got := strings.Join(svcs, "; "); got != "kube-system/dns=10.1.0.10 UDP; default/web=10.1.0.1 TCP:30001 TCP:30000" {
		t.Errorf("services = %s", got)
	}
}

func TestBadLabFiles(t *testing.T) {
	cases := []struct {
		name, old, new string
		want           []string // every one must appear in the error
	}{
		{"unknown subnet", "{name: n3, subnet: b,", "{name: n3, subnet: c,", []string{`spec.nodes[2].subnet: Not found: "c"`, "subnets are a, b"}},
		{"overlapping subnets", "cidr: 172.20.2.0/24", "cidr: 172.20.0.0/16", []string{"spec.subnets[1].cidr", "overlaps spec.subnets[0].cidr"}},
		{"subnet overlaps pods", "cidr: 172.20.2.0/24", "cidr: 10.0.9.0/24", []string{"spec.subnets[1].cidr", "overlaps spec.podCIDR"}},
		{"service overlaps pods", "serviceCIDR: 10.1.0.0/16", "serviceCIDR: 10.0.128.0/17", []string{"spec.serviceCIDR", "overlaps spec.podCIDR"}},
		{"node IP out of range", "ip: 172.20.1.50", "ip: 172.20.2.50", []string{"spec.nodes[1].ip", "outside its subnet 172.20.1.0/24"}},
		{"node IP is the gateway", "ip: 172.20.1.50", "ip: 172.20.1.1", []string{"spec.nodes[1].ip", "gateway"}},
		{"node IP is broadcast", "ip: 172.20.1.50", "ip: 172.20.1.255", []string{"spec.nodes[1].ip", "broadcast"}},
		{"duplicate node IP", "ip: 172.20.1.50", "ip: 172.20.1.10", []string{"spec.nodes[1].ip: Duplicate value", "also node n1"}},
		{"duplicate node name", "{name: n3, subnet: b,", "{name: n1, subnet: b,", []string{`spec.nodes[2].name: Duplicate value: "n1"`}},
		{"duplicate subnet name", "{name: b, cidr", "{name: a, cidr", []string{`spec.subnets[1].name: Duplicate value: "a"`}},
		{"reserved node name", "{name: n3, subnet: b,", "{name: router, subnet: b,", []string{"spec.nodes[2].name", "reserved"}},
		{"bad encap", "encap: vxlan", "encap: geneve", []string{`spec.podNetwork.encap: Unsupported value: "geneve"`, `"ipip"`}},
		{"bad proxy mode", "mode: nftables", "mode: ebpf", []string{`spec.proxy.mode: Unsupported value: "ebpf"`}},
		{"no pod network without Kubernetes", "interface: routed", "interface: none", []string{`spec.podNetwork.interface: Invalid value: "none": none needs spec.kubernetes`}},
		{"host bits", "podCIDR: 10.0.0.0/16", "podCIDR: 10.0.0.1/16", []string{"spec.podCIDR", "did you mean 10.0.0.0/16"}},
		{"too few blocks", "blockSize: 24", "blockSize: 17", []string{"spec.podCIDR", "too few /17 blocks for 3 nodes"}},
		{"typo in field", "podCIDR: 10.0.0.0/16", "podCIRD: 10.0.0.0/16", []string{`unknown field "spec.podCIRD"`}},
		{"wrong kind", "kind: Lab", "kind: Cluster", []string{`kind: Unsupported value: "Cluster"`}},
		{"cluster IP outside range", "clusterIP: 10.1.0.10", "clusterIP: 10.2.0.10", []string{"spec.objects[Service kube-system/dns].spec.clusterIP", "10.1.0.0/16"}},
		{"node port out of range", "nodePort: 30000", "nodePort: 80", []string{"spec.objects[Service default/web].spec.ports[1].nodePort", "30000-32767"}},
		{"unknown object kind", "kind: Pod\n", "kind: Secret\n", []string{"spec.objects[4].kind", "v1/Secret"}},
		{"selector matches no node", "nodeSelector: {zone: b}", "nodeSelector: {zone: c}", []string{"spec.objects[Pod default/picky-0].spec.nodeSelector", "no node of the lab matches"}},
		{"pod on unknown node", "nodeName: n3", "nodeName: n9", []string{`spec.objects[Pod default/pinned].spec.nodeName: Not found: "n9"`}},
		{"unknown protocol", "protocol: UDP", "protocol: ICMP", []string{"spec.ports[0].protocol", `"ICMP"`}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if !strings.Contains(testLab, c.old) {
				t.Fatalf("test case edits %q, which the test lab lacks", c.old)
			}
			text := strings.Replace(testLab, c.old, c.new, 1)
			f, err := Parse([]byte(text))
			if err == nil {
				_, err = NewPlan("t1", "", f)
			}
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
		})
	}
}

func TestBadLabName(t *testing.T) {
	f, _ := Parse([]byte(testLab))
	for _, name := range []string{"Has_Upper", "dots.are.out", strings.Repeat("x", 40), ""} {
		if _, err := NewPlan(name, "", f); err == nil || !strings.Contains(err.Error(), "metadata.name") {
			t.Errorf("lab name %q: err = %v", name, err)
		}
	}
}
