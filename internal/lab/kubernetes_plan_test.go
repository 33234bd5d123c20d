package lab

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
)

func TestKubernetesPlan(t *testing.T) {
	p, _, err := Prepare("kp", Source{Preset: "D", Kubernetes: true})
	if err != nil {
		t.Fatal(err)
	}
	k := p.Kubernetes
	if k == nil || k.Version != DefaultKubernetesVersion {
		t.Fatalf("kubernetes plan %+v, want version %s", k, DefaultKubernetesVersion)
	}
	if got := k.ControlPlane.IP.String(); got != "172.20.1.254" {
		t.Errorf("control plane at %s, want zone-a's last address 172.20.1.254", got)
	}
	if got := p.APIServer(); got != "https://172.20.1.254:6443" {
		t.Errorf("API server %s", got)
	}
	// The range allocator hands out blocks from the first as nodes
	// register (up records what it really gave).
	for i, want := range []string{"10.0.0.0/24", "10.0.1.0/24", "10.0.2.0/24"} {
		if got := p.Nodes[i].PodCIDR.String(); got != want {
			t.Errorf("%s: pod CIDR %s, want %s", p.Nodes[i].Name, got, want)
		}
	}
	var hosts []string
	for _, h := range p.hosts() {
		hosts = append(hosts, h.Name)
	}
	if !strings.Contains(strings.Join(hosts, ","), ControlPlaneName) {
		t.Errorf("the router's hosts %v lack the control plane", hosts)
	}
	if rs := p.routerRuleset().String(); !strings.Contains(rs, k.ControlPlane.MAC+" . 172.20.1.254") {
		t.Errorf("the router's VPC check does not admit the control plane:\n%s", rs)
	}
	plain, _, err := Prepare("kp", Source{Preset: "D"})
	if err != nil {
		t.Fatal(err)
	}
	if plain.Kubernetes != nil || plain.Nodes[0].PodCIDR.String() != "10.0.1.0/24" {
		t.Errorf("a plain lab changed: %+v, node-1 %s", plain.Kubernetes, plain.Nodes[0].PodCIDR)
	}
}

func TestKubernetesPlanErrors(t *testing.T) {
	for _, c := range []struct{ spec, want string }{
		{"kubernetes: {version: v1.30.0}", `spec.kubernetes.version: Unsupported value: "v1.30.0"`},
		{"kubernetes: {}\n  nodes:\n  - {name: control-plane, subnet: a}", "spec.nodes[0].name: Invalid value: \"control-plane\": is reserved"},
		{"kubernetes: {}\n  nodes:\n  - {name: n1, subnet: a, ip: 10.9.0.254}", "spec.nodes[0].ip: Invalid value: \"10.9.0.254\": is the Kubernetes lab's control-plane address"},
		{"kubernetes: {versoin: v1.37.2}", `unknown field "spec.kubernetes.versoin"`},
	} {
		text := "apiVersion: kdive.dev/v1alpha1\nkind: Lab\nspec:\n  podCIDR: 10.0.0.0/16\n  blockSize: 24\n  serviceCIDR: 10.1.0.0/16\n" +
			"  podNetwork: {interface: routed, encap: vxlan, encapPolicy: cross-subnet}\n  proxy: {mode: nftables}\n" +
			"  subnets: [{name: a, cidr: 10.9.0.0/24}]\n  " + c.spec + "\n"
		if !strings.Contains(text, "nodes:") {
			text += "  nodes: [{name: n1, subnet: a}]\n"
		}
		_, _, err := Prepare("kp", Source{File: []byte(text), FileName: "lab.yaml"})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s:\n got %v\nwant %s", c.spec, err, c.want)
		}
	}
}

func TestRestartOnKubernetesLabSaysHow(t *testing.T) {
	defer func(old string) { RunDir = old }(RunDir)
	RunDir = t.TempDir()
	p, _, err := Prepare("kr", Source{Preset: "D", Kubernetes: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(Dir("kr"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := (&State{Plan: p}).save(); err != nil {
		t.Fatal(err)
	}
	_, err = RestartAgent(context.Background(), "kr", "node-2", RestartOptions{})
	if err == nil || !strings.Contains(err.Error(), "delete pod -l k8s-app=kdive --field-selector spec.nodeName=node-2") {
		t.Errorf("restart on a Kubernetes lab: %v, want how to restart the node's kdive pod", err)
	}
}

// TestKubernetesPlanPodBlocks: the router lets the control plane reach pod
// blocks in every Kubernetes lab, but pods of different nodes reach each
// other through it only on the cloud's pod network (interface none); nft
// accepts both rulesets.
func TestKubernetesPlanPodBlocks(t *testing.T) {
	kdive, _, err := Prepare("kp", Source{Preset: "D", Kubernetes: true})
	if err != nil {
		t.Fatal(err)
	}
	cloud, _, err := Prepare("kp", Source{Preset: "D", Kubernetes: true, Interface: InterfaceNone})
	if err != nil {
		t.Fatal(err)
	}
	if kdive.cloudPodNetwork() || !cloud.cloudPodNetwork() {
		t.Fatalf("cloudPodNetwork: kdive's %v, none %v", kdive.cloudPodNetwork(), cloud.cloudPodNetwork())
	}
	podToPod := "ip saddr @pod_sources ip daddr @pod_blocks"
	cp := kdive.Kubernetes.ControlPlane
	node := kdive.Nodes[0]
	rs := kdive.routerRuleset().String()
	if !strings.Contains(rs, "pod_peers { "+cp.MAC+" . "+cp.IP.String()+" }") || strings.Contains(rs, podToPod) {
		t.Errorf("kdive's pod network: pod_peers must be the control plane alone, and no pod-to-pod rule:\n%s", rs)
	}
	rs = cloud.routerRuleset().String()
	if !strings.Contains(rs, "\t"+node.MAC+" . "+node.IP.String()+",\n") || !strings.Contains(rs, podToPod) {
		t.Errorf("the cloud's pod network: nodes must be pod peers, and pods reach other nodes' pods:\n%s", rs)
	}
	peers, _, _ := strings.Cut(rs[strings.Index(rs, "add element inet "+RouterTable+" pod_peers"):], "}")
	if strings.Contains(peers, cloud.External.MAC) {
		t.Errorf("the external client may not reach pods: %s", peers)
	}
	if _, err := exec.LookPath("nft"); err == nil && os.Geteuid() == 0 {
		for _, p := range []*Plan{kdive, cloud} {
			cmd := exec.Command("nft", "-c", "-f", "-")
			cmd.Stdin = strings.NewReader(strings.Replace(p.routerRuleset().String(), "delete table inet "+RouterTable+"\n", "", 1))
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Errorf("nft -c refuses the router ruleset (interface %s): %v\n%s", p.PodNetwork.Interface, err, out)
			}
		}
	}
	conf, err := cloud.referenceConfList(node)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"type": "bridge"`, `"type": "host-local"`, `"subnet": "` + node.PodCIDR.String() + `"`, `"type": "portmap"`, `"portMappings": true`} {
		if !strings.Contains(string(conf), want) {
			t.Errorf("%s's CNI config lacks %s:\n%s", node.Name, want, conf)
		}
	}
}
