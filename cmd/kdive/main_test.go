package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/ktest"
	"github.com/kdive/kdive/internal/lab"
	"github.com/kdive/kdive/internal/testbin"
)

// The command line is stable (scripts depend on it), so these tests run the
// built binary as a user would.

func TestMain(m *testing.M) { os.Exit(testbin.Main(m)) }

// run runs kdive and returns stdout, stderr and the exit status.
func run(t *testing.T, stdin string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(testbin.Path(t, testbin.Kdive), args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return out.String(), errb.String(), 0
	case errors.As(err, &ee):
		return out.String(), errb.String(), ee.ExitCode()
	}
	t.Fatalf("kdive %v: %v", args, err)
	return "", "", -1
}

func TestVersion(t *testing.T) {
	out, _, code := run(t, "", "version")
	if code != 0 || !strings.HasPrefix(out, "kdive ") || !strings.Contains(out, runtime.Version()) || !strings.Contains(out, "commit ") {
		t.Errorf("kdive version = %q (exit %d)", out, code)
	}
	out, _, _ = run(t, "", "version", "-o", "json")
	var v map[string]string
	if err := json.Unmarshal([]byte(out), &v); err != nil || v["goVersion"] != runtime.Version() || v["version"] == "" || v["commit"] == "" {
		t.Errorf("kdive version -o json = %q: %v", out, err)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"show", "nonsense"}, "invalid argument"},
		{[]string{"lab", "up", "--preset", "Q"}, `unknown preset "Q"`},
		{[]string{"lab", "up", "--preset", "A", "-f", "x.yaml"}, "exclusive"},
		{[]string{"lab", "down"}, "give a lab name or --all"},
		{[]string{"lab", "status", "kdt-no-such-lab"}, "no such lab"},
		{[]string{"echo", "--listen", "tcp:80x"}, `port "80x"`},
		{[]string{"verify", "--kubeconfig", "/nonexistent/kubeconfig"}, "/nonexistent/kubeconfig"},
		{[]string{"verify", "--lab", "x", "--context", "y"}, "--lab verifies a lab"},
		{[]string{"verify", "--check", "pod-to-everywhere"}, "unknown check pod-to-everywhere"},
		{[]string{"probe", "ftp", "x"}, "want http URL, udp HOST:PORT or idle"},
		{[]string{"verify", "--kubeconfig", "/dev/null"}, "give --lab NAME to verify a lab"},
	} {
		_, errOut, code := run(t, "", c.args...)
		if code != 1 || !strings.Contains(errOut, c.want) {
			t.Errorf("kdive %s: exit %d, stderr %q; want 1 and %q", strings.Join(c.args, " "), code, errOut, c.want)
		}
	}
}

func TestLabPrint(t *testing.T) {
	out, _, code := run(t, "", "lab", "up", "--preset", "a", "--print")
	if code != 0 || !strings.Contains(out, "kind: Lab") || !strings.Contains(out, "mode: ipvs") {
		t.Errorf("lab up --preset a --print: exit %d\n%s", code, out)
	}
	// What --print gives is a lab file lab up accepts as it is.
	p, _, err := lab.Prepare("", lab.Source{File: []byte(out), FileName: "printed"})
	if err != nil {
		t.Fatalf("the printed preset is not a valid lab file: %v", err)
	}
	if p.PodNetwork.Encap != "ipip" || p.PodNetwork.EncapPolicy != "cross-subnet" || p.Proxy.Mode != "ipvs" {
		t.Errorf("printed preset A = %+v %+v", p.PodNetwork, p.Proxy)
	}
}

const cliLab = `
apiVersion: kdive.dev/v1alpha1
kind: Lab
spec:
  podCIDR: 10.0.0.0/16
  blockSize: 24
  serviceCIDR: 10.1.0.0/16
  podNetwork: {interface: routed, encap: vxlan, encapPolicy: cross-subnet}
  proxy: {mode: iptables}
  subnets: [{name: a, cidr: 172.20.1.0/24}, {name: b, cidr: 172.20.2.0/24}]
  nodes: [{name: n1, subnet: a}, {name: n2, subnet: b}]
  objects:
  - apiVersion: v1
    kind: Service
    metadata: {name: web}
    spec: {type: NodePort, ports: [{name: http, port: 80}]}
  - apiVersion: v1
    kind: Pod
    metadata: {name: web-0}
    spec: {containers: [{name: echo, image: kdive-echo}]}
`

func TestLabCommands(t *testing.T) {
	ktest.RequireFeature(t, kernel.FeatureVeth)
	ktest.RequireFeature(t, kernel.FeatureNFTables)
	const name = "kdt-cli"
	run(t, "", "lab", "down", name)
	if out, errOut, code := run(t, cliLab, "lab", "up", "--name", name, "-f", "-"); code != 0 {
		t.Fatalf("lab up: exit %d\n%s%s", code, out, errOut)
	}
	t.Cleanup(func() { run(t, "", "lab", "down", name) })

	out, _, code := run(t, "", "lab", "status", name, "-o", "json")
	var st struct {
		Name     string
		Nodes    []struct{ Name, Subnet, IP, PodCIDR string }
		External struct{ IP string }
		Pods     []struct{ Namespace, Name, Node, IP string }
		Services []struct {
			Namespace, Name, ClusterIP string
			Ports                      []struct {
				Name     string
				Port     int
				Protocol string
				NodePort int
			}
		}
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil || code != 0 {
		t.Fatalf("lab status -o json: exit %d, %v\n%s", code, err, out)
	}
	if st.Name != name || len(st.Nodes) != 2 || st.Nodes[1].IP != "172.20.2.10" || st.Nodes[1].PodCIDR != "10.0.2.0/24" ||
		st.External.IP != "198.51.100.10" || len(st.Pods) != 1 || st.Pods[0].Node != "n1" ||
		len(st.Services) != 1 || st.Services[0].ClusterIP != "10.1.0.1" || st.Services[0].Ports[0].NodePort != 30000 {
		t.Errorf("lab status = %+v", st)
	}
	if out, _, _ := run(t, "", "lab", "list"); !strings.Contains(out, name) {
		t.Errorf("lab list lacks %s:\n%s", name, out)
	}

	// exec passes stdin, stdout, stderr and the exit status through, in the
	// node's namespace.
	out, errOut, code := run(t, "to stdout", "lab", "exec", name, "n2", "--", "sh", "-c", "cat; echo; echo to-stderr >&2; ip -o -4 addr show dev eth0; exit 7")
	if code != 7 || !strings.Contains(out, "to stdout") || !strings.Contains(out, "172.20.2.10/24") || !strings.Contains(errOut, "to-stderr") {
		t.Errorf("lab exec: exit %d\nstdout %q\nstderr %q", code, out, errOut)
	}
	if out, _, code := run(t, "", "lab", "exec", name, "external", "--", "ip", "-o", "-4", "addr", "show", "dev", "eth0"); code != 0 || !strings.Contains(out, "198.51.100.10/24") {
		t.Errorf("lab exec external: exit %d %q", code, out)
	}
	if _, errOut, code := run(t, "", "lab", "exec", name, "n9", "--", "true"); code != 1 || !strings.Contains(errOut, `no node or pod "n9"`) {
		t.Errorf("lab exec to unknown node: exit %d %q", code, errOut)
	}
	if out, _, code := run(t, "", "lab", "down", name); code != 0 || !strings.Contains(out, "is down") {
		t.Errorf("lab down: exit %d %q", code, out)
	}
	if nss, _ := kernel.ListNetNS("kdive-" + name + "."); len(nss) != 0 {
		t.Errorf("namespaces left: %v", nss)
	}
}
