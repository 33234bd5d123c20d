package verify_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kdive/kdive/internal/diag"
	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/ktest"
	"github.com/kdive/kdive/internal/lab"
	"github.com/kdive/kdive/internal/testbin"
	"github.com/kdive/kdive/internal/verify"
)

// requireKubernetes skips unless this is root with the Kubernetes lab's
// binaries and images (make kubernetes) in KDIVE_TEST_BINDIR.
func requireKubernetes(t *testing.T) {
	t.Helper()
	for _, f := range []kernel.Feature{kernel.FeatureVeth, kernel.FeatureBridge, kernel.FeatureNFTables, kernel.FeatureVXLAN} {
		ktest.RequireFeature(t, f)
	}
	if os.Getenv("KDIVE_TEST_BINDIR") == "" {
		t.Skip("a Kubernetes lab needs the binaries and images of `make kubernetes`: set KDIVE_TEST_BINDIR to bin/ (make test does)")
	}
	if err := lab.CheckKubernetesBinaries(testBins(t)); err != nil {
		t.Skip(err)
	}
}

// TestKubernetesLabTools brings up a real Kubernetes cluster in the other
// modes this kernel has than TestKubernetesLab's preset D: preset C's
// kube-bridge and iptables proxy, with VXLAN across subnets instead of
// IPIP (which only the test VM has). On it runs what a plain lab has: lab
// status, show (every kind) on every node, trace with a probe from a pod
// to a Service, verify (every check passes), lab apply and lab delete
// through the API server.
func TestKubernetesLabTools(t *testing.T) {
	requireKubernetes(t)
	const name = "kdt-kview"
	ctx := context.Background()
	downLeftover(t, name)
	preset, err := lab.PresetYAML("C")
	if err != nil {
		t.Fatal(err)
	}
	file := []byte(strings.Replace(string(preset), "encap: ipip", "encap: vxlan", 1))
	p, raw, err := lab.Prepare(name, lab.Source{File: file, FileName: "preset C with VXLAN", Kubernetes: true})
	if err != nil {
		t.Fatal(err)
	}
	var progress bytes.Buffer
	start := time.Now()
	s, err := lab.Up(ctx, p, lab.UpOptions{LabFile: raw, Binaries: testBins(t), Progress: &progress})
	if err != nil {
		t.Fatalf("up: %v\nprogress:\n%s", err, progress.String())
	}
	t.Logf("lab up --kubernetes: %.1fs", time.Since(start).Seconds())
	t.Cleanup(func() {
		if err := lab.Down(name); err != nil && !errors.Is(err, lab.ErrNoLab) {
			t.Errorf("lab down %s: %v", name, err)
		}
	})

	t.Run("status", func(t *testing.T) { checkKubeStatus(t, s) })
	t.Run("show", func(t *testing.T) { checkKubeShow(t, s) })
	t.Run("trace", func(t *testing.T) { checkKubeTrace(t, s) })
	t.Run("verify", func(t *testing.T) {
		start := time.Now()
		rep, err := verify.Run(ctx, verify.Options{Lab: name, Binaries: testBins(t), Inspect: testInspect})
		if err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		if err := rep.WriteTable(&b); err != nil {
			t.Fatal(err)
		}
		t.Logf("verify (%.1fs):\n%s", time.Since(start).Seconds(), b.String())
		for _, r := range rep.Results {
			switch {
			case !r.OK:
				t.Errorf("%s failed: %s\n  %s", r.Name, r.Reason, strings.Join(r.Details, "\n  "))
			case r.Skipped:
				t.Errorf("%s skipped: %s", r.Name, r.Reason)
			}
		}
		if len(rep.Results) != len(verify.ChecksOn("lab"))+1 {
			t.Errorf("%d results, want the workload and %d checks", len(rep.Results), len(verify.ChecksOn("lab")))
		}
		snap, err := lab.Snapshot(ctx, s)
		if err != nil {
			t.Fatal(err)
		}
		for _, pod := range snap.Pods {
			if pod.Namespace == verify.Namespace {
				t.Errorf("pod %s left behind", pod.Name)
			}
		}
	})
	t.Run("verify through the API", func(t *testing.T) { checkClusterVerify(t, s) })
	t.Run("apply and delete", func(t *testing.T) { checkKubeApplyDelete(t, s) })
}

// checkClusterVerify runs `kdive verify --kubeconfig` on the lab as on a
// cluster it does not own: through the API server only (the lab's host
// kubeconfig), no lab namespace. Every check a cluster can have passes;
// the lab-only ones are skipped, saying why. Then faults are injected from
// the lab's side (verify does not know about them) and verify must fail,
// naming where: one pod's default route deleted, one node's service
// chain flushed.
func checkClusterVerify(t *testing.T, s *lab.State) {
	ctx := context.Background()
	kubeconfig := s.Plan.KubeconfigFile()
	run := func(t *testing.T, keep bool, checks ...string) (*verify.Report, int) {
		t.Helper()
		args := []string{"verify", "--kubeconfig", kubeconfig, "-o", "json", "--timeout", "2s"}
		if keep {
			args = append(args, "--keep")
		}
		if len(checks) > 0 {
			args = append(args, "--check", strings.Join(checks, ","))
		}
		cmd := exec.Command(testbin.Path(t, testbin.Kdive), args...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		start := time.Now()
		out, err := cmd.Output()
		code := 0
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			code = exit.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		var rep verify.Report
		if err := json.Unmarshal(out, &rep); err != nil {
			t.Fatalf("kdive %s: exit %d, %v\n%s\n%s", strings.Join(args, " "), code, err, out, stderr.String())
		}
		var b strings.Builder
		if err := rep.WriteTable(&b); err != nil {
			t.Fatal(err)
		}
		t.Logf("kdive verify --kubeconfig %s (%.1fs, exit %d):\n%s", strings.Join(checks, ","), time.Since(start).Seconds(), code, b.String())
		return &rep, code
	}

	rep, code := run(t, true)
	if code != 0 || !rep.OK {
		t.Errorf("exit status %d, ok %v", code, rep.OK)
	}
	if rep.Lab != "" || !strings.Contains(rep.Cluster, "127.0.0.1") || rep.ProxyMode != s.Plan.Proxy.Mode {
		t.Errorf("report of lab %q, cluster %q, proxy mode %q; want the cluster at the host's forwarder in %s mode", rep.Lab, rep.Cluster, rep.ProxyMode, s.Plan.Proxy.Mode)
	}
	if len(rep.Results) != len(verify.ChecksOn("cluster"))+1 {
		t.Errorf("%d results, want the workload and %d checks", len(rep.Results), len(verify.ChecksOn("cluster")))
	}
	for _, c := range verify.ChecksOn("cluster") {
		r := result(rep, c.Name)
		switch {
		case !r.OK:
			t.Errorf("%s failed: %s\n  %s", r.Name, r.Reason, strings.Join(r.Details, "\n  "))
		case c.On == "lab" && (!r.Skipped || r.Reason == ""):
			t.Errorf("%s (lab only): skipped %v, reason %q; want skipped with the reason", c.Name, r.Skipped, r.Reason)
		case c.On != "lab" && r.Skipped:
			t.Errorf("%s skipped: %s", r.Name, r.Reason)
		}
	}
	if t.Failed() {
		return // the faults below need a working cluster
	}

	// echo-1 runs on node-2 (echo-N on node N mod 3, 0-based).
	snap, err := lab.Snapshot(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(snap.Pods, func(p corev1.Pod) bool { return p.Namespace == verify.Namespace && p.Name == "echo-1" })
	if i < 0 {
		t.Fatal("no pod echo-1")
	}
	path, err := lab.PodNetNSPath(s, &snap.Pods[i])
	if err != nil {
		t.Fatal(err)
	}
	t.Run("a pod's default route deleted", func(t *testing.T) {
		pod := openNS(t, path)
		route, ok := findRoute(t, pod, netip.Prefix{})
		if !ok {
			t.Fatal("echo-1 has no default route")
		}
		if err := pod.DeleteRoute(route); err != nil {
			t.Fatal(err)
		}
		defer func() {
			if err := pod.ReplaceRoute(route); err != nil {
				t.Errorf("restore %s: %v", route, err)
			}
		}()
		rep, code := run(t, true, "pod-to-pod-same-node", "pod-to-pod-other-node", "node-to-pod")
		if code != 1 {
			t.Errorf("exit status %d, want 1", code)
		}
		// On its bridge echo-1 still reaches its node's pods; nothing
		// beyond.
		wantPass(t, rep, "pod-to-pod-same-node")
		wantFailure(t, rep, "pod-to-pod-other-node", verify.Namespace+"/echo-1 (node-2)")
		wantFailure(t, rep, "node-to-pod", verify.Namespace+"/echo-1 (node-2)")
	})

	t.Run("a node's service chain flushed", func(t *testing.T) {
		n2 := openNS(t, s.Plan.Nodes[1].NetNS)
		// The agent repairs it at its next periodic sync (every 30 s),
		// which may fall into a run, before either check or between
		// them: then flush and run again.
		for attempt := 1; ; attempt++ {
			flushServices(t, n2)
			rep, code := run(t, true, "pod-to-clusterip", "node-to-clusterip")
			repaired := result(rep, "pod-to-clusterip").OK || result(rep, "node-to-clusterip").OK
			if repaired && attempt < 4 {
				t.Logf("the agent repaired the chain during attempt %d; again", attempt)
				continue
			}
			if code != 1 {
				t.Errorf("exit status %d, want 1", code)
			}
			wantFailure(t, rep, "pod-to-clusterip", verify.Namespace+"/echo-1 (node-2)", "no answer")
			wantFailure(t, rep, "node-to-clusterip", "node-2 → ClusterIP")
			return
		}
	})

	// Without --keep the workload goes, namespace and all.
	if rep, code := run(t, false, "hairpin"); code != 0 || !rep.OK {
		t.Errorf("last run: exit status %d, ok %v", code, rep.OK)
	}
	cs, done, err := lab.KubeClient(s)
	if err != nil {
		t.Fatal(err)
	}
	defer done()
	if _, err := cs.CoreV1().Namespaces().Get(ctx, verify.Namespace, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("namespace %s after a run without --keep: %v, want it gone", verify.Namespace, err)
	}
}

// flushServices empties KUBE-SERVICES, the iptables proxy's entry chain
// for cluster IPs and NodePorts, in whichever iptables the node's agent
// uses.
func flushServices(t *testing.T, ns *kernel.NetNS) {
	t.Helper()
	ctx := context.Background()
	for _, bin := range []string{"iptables-nft", "iptables-legacy"} {
		out, err := ns.Run(ctx, "", bin+"-save", "-t", "nat")
		if err != nil || !strings.Contains(out, "-A KUBE-SERVICES") {
			continue
		}
		if _, err := ns.Run(ctx, "", bin, "-w", "-t", "nat", "-F", "KUBE-SERVICES"); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Fatal("no iptables of the node has rules in KUBE-SERVICES")
}

func checkKubeStatus(t *testing.T, s *lab.State) {
	st := lab.GetStatus(context.Background(), s)
	if st.State != "running" || len(st.Problems) > 0 {
		t.Errorf("state %s, problems %v", st.State, st.Problems)
	}
	if cp := st.ControlPlane; cp == nil || cp.IP != s.Plan.Kubernetes.ControlPlane.IP.String() {
		t.Errorf("control plane %+v, want %s", cp, s.Plan.Kubernetes.ControlPlane.IP)
	}
	agents := 0
	for _, pod := range st.Pods {
		switch {
		case pod.HostNetwork:
			n, _ := s.Plan.Node(pod.Node)
			if pod.NetNS != filepath.Join(kernel.NetNSDir, n.NetNS) {
				t.Errorf("hostNetwork pod %s/%s: netns %q, want its node's", pod.Namespace, pod.Name, pod.NetNS)
			}
			if strings.HasPrefix(pod.Name, "kdive-") {
				agents++
			}
		case pod.IP == "" || !strings.HasPrefix(pod.NetNS, "/proc/"):
			t.Errorf("pod %s/%s: IP %q, netns %q", pod.Namespace, pod.Name, pod.IP, pod.NetNS)
		}
	}
	if agents != len(s.Plan.Nodes) {
		t.Errorf("%d kdive agent pods, want one per node", agents)
	}
	var svcs []string
	for _, svc := range st.Services {
		svcs = append(svcs, svc.Namespace+"/"+svc.Name)
	}
	for _, want := range []string{"default/kubernetes", "default/ingress", "kube-system/kube-dns"} {
		if !slices.Contains(svcs, want) {
			t.Errorf("no service %s among %v", want, svcs)
		}
	}
	var b strings.Builder
	if err := st.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), lab.ControlPlaneName) {
		t.Errorf("status does not show the control plane:\n%s", b.String())
	}
	t.Logf("lab status:\n%s", b.String())
}

// checkKubeShow: on every node, show pods lists the node's pods with
// their veth, route, netns and containerd's CNI attachment; blocks count
// them in the node's IPAM store; routes and links name them; lb names
// each endpoint's pod.
func checkKubeShow(t *testing.T, s *lab.State) {
	ctx := context.Background()
	st := lab.GetStatus(ctx, s)
	for _, n := range s.Plan.Nodes {
		target := diag.Target{Lab: s.Plan.Name, Node: n.Name}
		var want []string
		for _, pod := range st.Pods {
			if pod.Node == n.Name && !pod.HostNetwork {
				want = append(want, pod.Namespace+"/"+pod.Name)
			}
		}
		pods, err := diag.Pods(ctx, target)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, r := range pods.Pods {
			got = append(got, r.Namespace+"/"+r.Name)
			if r.HostInterface == "" || r.Route == "" || r.ContainerID == "" || !strings.HasPrefix(r.NetNS, "/proc/") || len(r.Problems) > 0 {
				t.Errorf("%s: show pods row %+v", n.Name, r)
			}
		}
		slices.Sort(want)
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Errorf("%s: show pods lists %v, want %v", n.Name, got, want)
		}
		blocks, err := diag.Blocks(ctx, target)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range blocks.Blocks {
			if b.Local && (b.Block != n.PodCIDR.String() || b.InUse == nil || *b.InUse != len(want) || len(b.Problems) > 0) {
				t.Errorf("%s: own block row %+v (in use %v), want %s with %d addresses in use", n.Name, b, b.InUse, n.PodCIDR, len(want))
			}
		}
		routes, err := diag.Routes(ctx, target)
		if err != nil {
			t.Fatal(err)
		}
		kinds := map[string]int{}
		for _, r := range routes.Routes {
			kinds[r.Kind]++
		}
		// Routed pods have a route each; bridged ones kube-bridge's one.
		podRoutes, bridgeRoutes := len(want), 0
		if s.Plan.PodNetwork.Interface == "bridge" {
			podRoutes, bridgeRoutes = 0, 1
		}
		if kinds["own-block"] != 1 || kinds["peer-block"] != len(s.Plan.Nodes)-1 || kinds["pod"] != podRoutes ||
			kinds["pod-bridge"] != bridgeRoutes || kinds["foreign"] > 0 {
			t.Errorf("%s: show routes kinds %v", n.Name, kinds)
		}
		links, err := diag.Links(ctx, target)
		if err != nil {
			t.Fatal(err)
		}
		veths := 0
		for _, l := range links.Links {
			if l.Role == "pod-veth" && l.Pod != "" {
				veths++
			}
		}
		if veths != len(want) {
			t.Errorf("%s: show links names %d pod veths, want %d", n.Name, veths, len(want))
		}
		var lb strings.Builder
		if err := diag.ShowLB(ctx, target, diag.Output{Format: diag.FormatJSON, W: &lb}); err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{`"name": "default/ingress:http"`, `"name": "kube-system/kube-dns:dns"`, `"pod": "default/ingress-`, `"pod": "kube-system/coredns-`} {
			if !strings.Contains(lb.String(), want) {
				t.Errorf("%s: show lb -o json lacks %s:\n%s", n.Name, want, lb.String())
			}
		}
		for _, r := range [][]string{{"routes", "--node", n.Name}, {"pods"}} {
			out, err := exec.Command(testbin.Path(t, testbin.Kdive), append([]string{"show"}, append(r, "--lab", s.Plan.Name)...)...).CombinedOutput()
			if err != nil {
				t.Errorf("kdive show %s: %v\n%s", strings.Join(r, " "), err, out)
			} else if n.Name == s.Plan.Nodes[0].Name {
				t.Logf("kdive show %s --lab %s:\n%s", strings.Join(r, " "), s.Plan.Name, out)
			}
		}
	}
}

// checkKubeTrace: a traced and probed request from a client pod to the
// ingress Service reaches an endpoint as predicted.
func checkKubeTrace(t *testing.T, s *lab.State) {
	st := lab.GetStatus(context.Background(), s)
	var client string
	for _, pod := range st.Pods {
		if pod.Namespace == "kube-system" && strings.HasPrefix(pod.Name, "coredns-") {
			client = pod.Namespace + "/" + pod.Name
		}
	}
	if client == "" {
		t.Fatal("no coredns pod to trace from")
	}
	// The probe needs an echo server's answer: CoreDNS is traced only.
	for to, probe := range map[string]bool{"default/ingress:http": true, "kube-system/kube-dns:dns": false} {
		req := diag.TraceRequest{Lab: s.Plan.Name, From: client, To: to, Probe: probe, Inspect: diag.InspectProxy}
		rep, err := diag.Trace(context.Background(), req)
		if err != nil {
			t.Fatalf("trace %s -> %s: %v", client, to, err)
		}
		var out strings.Builder
		if err := rep.WriteMinimal(&out); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out.String(), "lb=DNAT") || !strings.Contains(out.String(), "delivered=yes") || (probe && !strings.Contains(out.String(), "predicted=yes")) {
			t.Errorf("trace (probe %v) %s -> %s:\n%s", probe, client, to, out.String())
		}
		t.Logf("trace (probe %v) %s -> %s:\n%s", probe, client, to, out.String())
	}
	out, err := exec.Command(testbin.Path(t, testbin.Kdive), "trace", "--lab", s.Plan.Name, "--from", "node-1", "--to", "default/kubernetes:https").CombinedOutput()
	if err != nil || !strings.Contains(string(out), lab.ControlPlaneName) {
		t.Errorf("kdive trace node-1 -> default/kubernetes: %v\n%s", err, out)
	}
	t.Logf("kdive trace --from node-1 --to default/kubernetes:https:\n%s", out)
}

const kubeApplyObjects = `apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: kview}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: echo, image: kdive-echo, ports: [{containerPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: kview}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
`

// checkKubeApplyDelete: lab apply creates the namespace and the objects
// through the API server, reports nothing for an unchanged object and
// "configured" for a changed one, refuses an invalid file whole; lab
// delete waits until the object and (a Deployment's) pods are gone.
func checkKubeApplyDelete(t *testing.T, s *lab.State) {
	ctx := context.Background()
	name := s.Plan.Name
	changes, err := lab.Apply(ctx, name, []byte(kubeApplyObjects), testBins(t))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(changes, "|"); got != "namespace/kview created|service/kview/web created|deployment/kview/web created" {
		t.Errorf("apply: %q", got)
	}
	if changes, err := lab.Apply(ctx, name, []byte(kubeApplyObjects), testBins(t)); err != nil || len(changes) > 0 {
		t.Errorf("apply again: %v, %v; want no change", changes, err)
	}
	bad := strings.Replace(kubeApplyObjects, "port: 80,", "port: 80, bogus: 1,", 1) + "---\napiVersion: v1\nkind: Pod\nmetadata: {name: lone, namespace: kview}\nspec: {nodeName: node-9, containers: [{name: c, image: kdive-echo}]}\n"
	var invalid *lab.InvalidError
	if _, err := lab.Apply(ctx, name, []byte(bad), testBins(t)); !errors.As(err, &invalid) {
		t.Errorf("apply of an invalid file: %v, want an InvalidError", err)
	} else if !strings.Contains(err.Error(), "bogus") {
		t.Errorf("apply of an invalid file: %v", err)
	}
	scaled := strings.Replace(kubeApplyObjects, "replicas: 2", "replicas: 3", 1)
	if changes, err := lab.Apply(ctx, name, []byte(scaled), testBins(t)); err != nil || strings.Join(changes, "|") != "deployment/kview/web configured" {
		t.Errorf("apply scaled: %v, %v", changes, err)
	}
	webPods := func() ([]string, error) {
		snap, err := lab.Snapshot(ctx, s)
		if err != nil {
			return nil, err
		}
		var out []string
		for _, p := range snap.Pods {
			if p.Namespace == "kview" {
				out = append(out, fmt.Sprintf("%s(%s)", p.Name, p.Status.Phase))
			}
		}
		return out, nil
	}
	ktest.Eventually(t, 2*time.Minute, "3 kview pods running", func() error {
		pods, err := webPods()
		if err != nil {
			return err
		}
		if len(pods) != 3 || strings.Contains(strings.Join(pods, ","), "Pending") {
			return fmt.Errorf("kview pods: %v", pods)
		}
		return nil
	})
	start := time.Now()
	if changes, err := lab.Delete(ctx, name, "deployment/kview/web"); err != nil || strings.Join(changes, "|") != "deployment/kview/web deleted" {
		t.Errorf("delete deployment: %v, %v", changes, err)
	}
	t.Logf("delete deployment/kview/web (3 pods): %.1fs", time.Since(start).Seconds())
	if pods, err := webPods(); err != nil || len(pods) > 0 {
		t.Errorf("pods after the deployment's deletion: %v, %v", pods, err)
	}
	if changes, err := lab.Delete(ctx, name, "svc/kview/web"); err != nil || strings.Join(changes, "|") != "service/kview/web deleted" {
		t.Errorf("delete service: %v, %v", changes, err)
	}
	if _, err := lab.Delete(ctx, name, "service/kview/web"); err == nil || !strings.Contains(err.Error(), "has no service kview/web") {
		t.Errorf("delete a missing service: %v", err)
	}
}
