package agent

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/kdive/kdive/deploy"
	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/ktest"
	"github.com/kdive/kdive/internal/source/kubetest"
)

// The agent on a cluster: a real kube-apiserver and etcd run on the
// loopback of the node's namespace (address plan as in agent_test.go), and
// `kdive agent` runs there as on a node, with the DaemonSet's
// ServiceAccount token and exactly the ClusterRole of deploy/kdive.yaml
// under RBAC, so a verb missing from the manifest fails this test.
func TestAgentOnKubeAPIServer(t *testing.T) {
	ktest.RequireRoot(t)
	bindir := kubetest.Binaries(t)
	kdive := filepath.Join(bindir, "kdive")
	if _, err := os.Stat(kdive); err != nil {
		t.Skipf("needs the kdive binary in KDIVE_TEST_BINDIR (`make build`): %v", err)
	}
	node, peer := ktest.NewNetNS(t), ktest.NewNetNS(t)
	if err := node.AddVeth("eth0", kernel.LinkAttrs{MTU: 1500}, peer, "eth0", kernel.LinkAttrs{}); err != nil {
		t.Fatal(err)
	}
	if err := node.AddAddr("eth0", netip.MustParsePrefix("192.0.2.10/24")); err != nil {
		t.Fatal(err)
	}
	if err := node.LinkUp("eth0"); err != nil {
		t.Fatal(err)
	}
	srv := kubetest.Start(t, node)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	admin := srv.Admin()

	token := installRBAC(ctx, t, admin)
	kubeconfig := srv.WriteKubeconfig("kdive", token)

	// The cluster: this node n1, n2 in its subnet, a Service with two
	// endpoints on n2.
	for _, n := range []corev1.Node{
		testNode("n1", "192.0.2.10", "10.244.1.0/24"),
		testNode("n2", "192.0.2.11", "10.244.2.0/24"),
	} {
		createNode(ctx, t, admin, n)
	}
	svc := createService(ctx, t, admin, "web", 80)
	clusterIP := svc.Spec.ClusterIP
	putSlice(ctx, t, admin, "web", "10.244.2.5", "10.244.2.6")

	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "agent.yaml")
	writeFile(t, cfgFile, fmt.Sprintf(`apiVersion: kdive.dev/v1alpha1
kind: AgentConfiguration
podNetwork: {interface: routed, encap: vxlan, encapPolicy: cross-subnet}
cni: {confDir: %s, dataDir: %s}
syncPeriod: 2s
minSyncPeriod: 10ms
`, filepath.Join(dir, "net.d"), filepath.Join(dir, "ipam")))
	// The DaemonSet's init step, with the same token and role.
	install := exec.Command(kdive, "install-cni", "--config", cfgFile, "--kubeconfig", kubeconfig, "--hostname-override", "n1",
		"--plugin", filepath.Join(bindir, "kdive-cni"), "--bin-dir", filepath.Join(dir, "bin"), "--wait", "30s")
	var installOut bytes.Buffer
	install.Stdout, install.Stderr = &installOut, &installOut
	if err := node.Start(install); err != nil {
		t.Fatal(err)
	}
	if err := install.Wait(); err != nil {
		t.Fatalf("kdive install-cni: %v\n%s", err, installOut.String())
	}
	if b, err := os.ReadFile(filepath.Join(dir, "net.d", "10-kdive.conflist")); err != nil || !strings.Contains(string(b), `"podCIDR": "10.244.1.0/24"`) {
		t.Errorf("install-cni wrote no conflist for n1's block: %v\n%s", err, b)
	}

	args := []string{"agent", "--config", cfgFile, "--kubeconfig", kubeconfig, "--hostname-override", "n1", "--proxy-mode", "nftables"}
	agent := startAgent(t, node, kdive, filepath.Join(dir, "agent.log"), args...)

	nft := func() string {
		out, _ := node.Run(ctx, "", "nft", "list", "table", "ip", "kdive-proxy")
		return out
	}
	waitFor := func(what string, cond func() error) {
		t.Helper()
		waited := false
		defer func() {
			if !waited { // Eventually failed the test
				t.Logf("agent log:\n%s", agent.tail(30))
			}
		}()
		ktest.Eventually(t, 30*time.Second, what, cond)
		waited = true
	}
	contains := func(get func() string, subs ...string) func() error {
		return func() error {
			s := get()
			for _, sub := range subs {
				if !strings.Contains(s, sub) {
					return fmt.Errorf("%q missing from:\n%s", sub, s)
				}
			}
			return nil
		}
	}
	lacks := func(get func() string, subs ...string) func() error {
		return func() error {
			s := get()
			for _, sub := range subs {
				if strings.Contains(s, sub) {
					return fmt.Errorf("%q still in:\n%s", sub, s)
				}
			}
			return nil
		}
	}
	routes := func() string { return routesText(t, node) }

	// Converge: routes for the peer's block, the service and its endpoints.
	waitFor("n2's block routed directly", contains(routes, "10.244.2.0/24 via 192.0.2.11 dev eth0", "blackhole 10.244.1.0/24"))
	waitFor("the service programmed", contains(nft, clusterIP, "10.244.2.5", "10.244.2.6"))

	// Update: an endpoint replaced; a node added.
	putSlice(ctx, t, admin, "web", "10.244.2.5", "10.244.2.7")
	waitFor("the new endpoint", contains(nft, "10.244.2.7"))
	waitFor("the old endpoint gone", lacks(nft, "10.244.2.6"))
	createNode(ctx, t, admin, testNode("n3", "192.0.2.12", "10.244.3.0/24"))
	waitFor("n3's block", contains(routes, "10.244.3.0/24 via 192.0.2.12 dev eth0"))

	// Health and metrics, kube-proxy's, in the node's namespace.
	get := func(url string) (int, string) {
		c := http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: node.DialContext}}
		resp, err := c.Get(url)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, path := range []string{"/healthz", "/livez"} {
		if code, body := get("http://127.0.0.1:10256" + path); code != http.StatusOK || !strings.Contains(body, `"lastUpdated"`) {
			t.Errorf("%s: %d %s", path, code, body)
		}
	}
	// Every series is there once a sync after the pod cache's listing ran.
	waitFor("kube-proxy's and kdive's series in /metrics", func() error {
		_, metrics := get("http://127.0.0.1:10249/metrics")
		for _, series := range []string{
			"kubeproxy_sync_proxy_rules_duration_seconds_count",
			"kubeproxy_sync_full_proxy_rules_duration_seconds_count",
			"kubeproxy_sync_partial_proxy_rules_duration_seconds_count",
			"kubeproxy_sync_proxy_rules_last_timestamp_seconds",
			"kubeproxy_network_programming_duration_seconds_count",
			"kdive_proxy_service_ports ",
			"kdive_proxy_endpoints 2", // the API server's own "kubernetes" Service has none here
			`kdive_ipam_addresses_total{block="10.244.1.0/24",node="n1"} 253`,
			`kdive_ipam_addresses_in_use{block="10.244.1.0/24",node="n1"} 0`,
			// Reported once this node's pods are listed (needs the pods verbs).
			`kdive_ipam_addresses_orphaned{block="10.244.1.0/24",node="n1"} 0`,
		} {
			if !strings.Contains(metrics, series) {
				return fmt.Errorf("/metrics lacks %s", series)
			}
		}
		if m := regexp.MustCompile(`kubeproxy_network_programming_duration_seconds_count (\d+)`).FindStringSubmatch(metrics); m == nil || m[1] == "0" {
			return fmt.Errorf("no network programming latency observed from the slices' trigger times: %v", m)
		}
		return nil
	})

	// The API server restarts (every watch breaks): the agent follows the
	// new server without reprogramming what did not change. The kernel's
	// own change feeds watch everything from before the restart until a
	// Service created afterwards is programmed.
	before := nft()
	mon := startMonitors(t, node)
	srv.Restart()
	svc2 := createService(ctx, t, admin, "api", 8080)
	putSlice(ctx, t, admin, "api", "10.244.2.9")
	waitFor("a service created after the restart", contains(nft, svc2.Spec.ClusterIP, "10.244.2.9"))
	events := mon.stop()
	for _, line := range events {
		if strings.Contains(line, svc2.Spec.ClusterIP) || strings.Contains(line, "default/api") || strings.Contains(line, "proto kernel") {
			continue // the new service; addresses the kernel adds itself
		}
		if strings.Contains(line, "delete") || strings.Contains(line, "table") || strings.Contains(line, clusterIP) || strings.Contains(line, "10.244.2.5") {
			t.Errorf("the kernel saw a change of unchanged state across the API server restart: %s", line)
		}
		if strings.HasPrefix(line, "route:") {
			t.Errorf("a route changed across the API server restart: %s", line)
		}
	}
	t.Logf("kernel changes across the API server restart and one new service: %d", len(events))
	if !strings.Contains(before, clusterIP) {
		t.Fatalf("the first service vanished before the restart:\n%s", before)
	}

	// SIGTERM: the agent exits and leaves the datapath in place; a new
	// agent adopts it (the nftables table is replaced in one transaction,
	// routes are found in place and kept).
	rulesBefore, routesBefore := nft(), routes()
	if err := agent.stop(syscall.SIGTERM); err != nil {
		t.Errorf("agent after SIGTERM: %v\n%s", err, agent.tail(20))
	}
	if got := nft(); got != rulesBefore {
		t.Errorf("rules changed when the agent stopped:\n%s\nwant\n%s", got, rulesBefore)
	}
	if got := routes(); got != routesBefore {
		t.Errorf("routes changed when the agent stopped:\n%s\nwant\n%s", got, routesBefore)
	}
	mon = startMonitors(t, node)
	agent = startAgent(t, node, kdive, filepath.Join(dir, "agent2.log"), args...)
	waitFor("the new agent healthy", func() error {
		code, body := get("http://127.0.0.1:10256/healthz")
		if code != http.StatusOK {
			return fmt.Errorf("/healthz %d: %s", code, body)
		}
		return nil
	})
	for _, line := range mon.stop() {
		if strings.HasPrefix(line, "route:") {
			t.Errorf("the new agent changed a route it should have adopted: %s", line)
		}
	}
	if got := normalizeRules(nft()); got != normalizeRules(rulesBefore) {
		t.Errorf("the new agent programmed different rules:\n%s\nwant\n%s", got, rulesBefore)
	}

	// Deletes converge too.
	if err := admin.CoreV1().Services("default").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := admin.DiscoveryV1().EndpointSlices("default").Delete(ctx, "web-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor("the deleted service gone", lacks(nft, clusterIP+" ", "10.244.2.5"))
	if err := admin.CoreV1().Nodes().Delete(ctx, "n3", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor("n3's route gone", lacks(routes, "10.244.3.0/24"))

	// The same agent in iptables mode (the flag over the config file):
	// the nftables table goes, the services come back as KUBE-SVC chains.
	if err := agent.stop(syscall.SIGTERM); err != nil {
		t.Errorf("agent after SIGTERM: %v", err)
	}
	args[len(args)-1] = "iptables"
	agent = startAgent(t, node, kdive, filepath.Join(dir, "agent3.log"), args...)
	iptables := func() string {
		nftOut, _ := node.Run(ctx, "", "iptables-nft-save", "-t", "nat")
		legacyOut, _ := node.Run(ctx, "", "iptables-legacy-save", "-t", "nat")
		return nftOut + legacyOut
	}
	waitFor("the service in iptables mode", contains(iptables, svc2.Spec.ClusterIP+"/32", "KUBE-SVC-", "10.244.2.9:8080"))
	waitFor("the nftables table gone", func() error {
		if out, err := node.Run(ctx, "", "nft", "list", "tables"); err != nil || strings.Contains(out, "kdive-proxy") {
			return fmt.Errorf("tables: %s %v", out, err)
		}
		return nil
	})
}

// installRBAC creates the manifest's ServiceAccount, ClusterRole and
// binding, and returns a token of the ServiceAccount.
func installRBAC(ctx context.Context, t *testing.T, c kubernetes.Interface) string {
	t.Helper()
	o, err := deploy.Decode(deploy.Manifest)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: o.ServiceAccount.Namespace}}, metav1.CreateOptions{}); err != nil {
		// kube-system exists once the API server's bootstrap ran.
		if _, gerr := c.CoreV1().Namespaces().Get(ctx, o.ServiceAccount.Namespace, metav1.GetOptions{}); gerr != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.CoreV1().ServiceAccounts(o.ServiceAccount.Namespace).Create(ctx, o.ServiceAccount, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.RbacV1().ClusterRoles().Create(ctx, o.ClusterRole, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.RbacV1().ClusterRoleBindings().Create(ctx, o.ClusterRoleBinding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	tr, err := c.CoreV1().ServiceAccounts(o.ServiceAccount.Namespace).CreateToken(ctx, o.ServiceAccount.Name,
		&authv1.TokenRequest{Spec: authv1.TokenRequestSpec{ExpirationSeconds: ptr(int64(3600))}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return tr.Status.Token
}

func ptr[T any](v T) *T { return &v }

// createNode creates a Node, then sets its status, as a kubelet does.
func createNode(ctx context.Context, t *testing.T, c kubernetes.Interface, n corev1.Node) {
	t.Helper()
	created, err := c.CoreV1().Nodes().Create(ctx, &n, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	created.Status = n.Status
	if _, err := c.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func createService(ctx context.Context, t *testing.T, c kubernetes.Interface, name string, port int32) *corev1.Service {
	t.Helper()
	svc, err := c.CoreV1().Services("default").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": name},
			Ports:    []corev1.ServicePort{{Name: "http", Port: port, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

// putSlice creates or replaces the Service's one EndpointSlice, stamped
// with the trigger time an EndpointSlice controller would set.
func putSlice(ctx context.Context, t *testing.T, c kubernetes.Interface, svc string, ips ...string) {
	t.Helper()
	ready := true
	s := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name: svc + "-1", Namespace: "default",
			Labels:      map[string]string{discoveryv1.LabelServiceName: svc},
			Annotations: map[string]string{corev1.EndpointsLastChangeTriggerTime: time.Now().UTC().Format(time.RFC3339Nano)},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr(int32(8080)), Protocol: ptr(corev1.ProtocolTCP)}},
	}
	for _, ip := range ips {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{
			Addresses: []string{ip}, NodeName: ptr("n2"),
			Conditions: discoveryv1.EndpointConditions{Ready: &ready},
		})
	}
	cur, err := c.DiscoveryV1().EndpointSlices("default").Get(ctx, s.Name, metav1.GetOptions{})
	if err == nil {
		s.ResourceVersion = cur.ResourceVersion
		_, err = c.DiscoveryV1().EndpointSlices("default").Update(ctx, s, metav1.UpdateOptions{})
	} else {
		_, err = c.DiscoveryV1().EndpointSlices("default").Create(ctx, s, metav1.CreateOptions{})
	}
	if err != nil {
		t.Fatal(err)
	}
}

func writeFile(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
}

// process is a kdive agent run by a test.
type process struct {
	cmd  *exec.Cmd
	log  string
	done chan error
}

func startAgent(t *testing.T, ns *kernel.NetNS, bin, log string, args ...string) *process {
	t.Helper()
	f, err := os.Create(log)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := ns.Start(cmd); err != nil {
		t.Fatal(err)
	}
	p := &process{cmd: cmd, log: log, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() { _ = p.stop(syscall.SIGKILL) }) // the test may have stopped it; its exit is the kill's
	return p
}

// stop signals the process and returns its exit error (nil for status 0).
func (p *process) stop(sig syscall.Signal) error {
	if p.cmd.ProcessState == nil {
		_ = p.cmd.Process.Signal(sig) // fails only if it is exiting already; done says how
	}
	select {
	case err, ok := <-p.done:
		if !ok {
			return nil
		}
		close(p.done)
		return err
	case <-time.After(20 * time.Second):
		_ = p.cmd.Process.Kill() // the error returned says it had to be killed
		return fmt.Errorf("did not exit 20 s after %v", sig)
	}
}

func (p *process) tail(n int) string {
	b, _ := os.ReadFile(p.log)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// monitors follow the kernel's change feeds in a namespace: `nft monitor`
// (every rule, set element, chain and table change) and `ip monitor route`.
type monitors struct {
	nft, route *ktest.Monitor
}

func startMonitors(t *testing.T, ns *kernel.NetNS) *monitors {
	t.Helper()
	return &monitors{nft: ktest.StartMonitor(t, ns, "nft", "monitor"), route: ktest.StartMonitor(t, ns, "ip", "monitor", "route")}
}

// stop ends the monitors and returns the changes they saw, each prefixed
// with "nft:" or "route:".
func (m *monitors) stop() []string {
	var lines []string
	for _, f := range []struct {
		pre string
		m   *ktest.Monitor
	}{{"nft:", m.nft}, {"route:", m.route}} {
		for _, e := range f.m.Finish() {
			if strings.TrimSpace(e.Text) != "" {
				lines = append(lines, f.pre+" "+e.Text)
			}
		}
	}
	return lines
}

var handleRE = regexp.MustCompile(` # handle \d+`)

// normalizeRules makes two listings of a table comparable: without
// handles, its sets, maps and chains in name order (a listing shows them
// in the order they were created).
func normalizeRules(s string) string {
	s = handleRE.ReplaceAllString(s, "")
	s = strings.TrimSuffix(strings.TrimSpace(s), "}")
	_, body, _ := strings.Cut(s, "\n")
	blocks := strings.Split(strings.TrimSpace(body), "\n\n")
	slices.Sort(blocks)
	return strings.Join(blocks, "\n\n")
}
