package lab

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/ktest"
	"github.com/kdive/kdive/internal/wait"
)

// proxyState is what any proxy mode left on a node: the nftables tables
// and the KUBE- chains of both iptables flavours.
func proxyState(t *testing.T, ns *kernel.NetNS) string {
	t.Helper()
	var out []string
	tables, _ := ns.Run(context.Background(), "", "nft", "list", "tables")
	for _, l := range strings.Split(tables, "\n") {
		if strings.Contains(l, "kdive-proxy") {
			out = append(out, strings.TrimSpace(l))
		}
	}
	for _, tool := range []string{"iptables-nft-save", "iptables-legacy-save"} {
		save, _ := ns.Run(context.Background(), "", tool)
		for _, l := range strings.Split(save, "\n") {
			if strings.HasPrefix(l, ":KUBE-") {
				out = append(out, tool+" "+strings.Fields(l)[0])
			}
		}
	}
	return strings.Join(out, "\n")
}

// stopNodeAgent ends node's agent (SIGTERM, SIGKILL when it has not gone
// within 20 s) and waits until it is gone, so two agents never run at once.
func stopNodeAgent(t *testing.T, p *Plan, node NodePlan) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(p.nodeDir(node.Name), "agent.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("%s's agent.pid: %v", node.Name, err)
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM to %s's agent: %v", node.Name, err)
	}
	gone := func() error {
		if processAlive(pid) {
			return fmt.Errorf("pid %d alive", pid)
		}
		return nil
	}
	if wait.Until(context.Background(), 20*time.Second, 10*time.Millisecond, gone) != nil {
		t.Logf("%s's agent ignored SIGTERM for 20 s: SIGKILL", node.Name)
		_ = syscall.Kill(pid, syscall.SIGKILL) // it may be exiting at last; gone below says
		ktest.Eventually(t, 10*time.Second, node.Name+"'s agent killed", gone)
	}
}

// restartAgent ends node n's agent and starts it again in another mode.
func restartAgent(t *testing.T, p *Plan, node NodePlan, mode string) {
	t.Helper()
	stopNodeAgent(t, p, node)
	if _, err := p.startAgent(node, testBins(t), mode); err != nil {
		t.Fatal(err)
	}
}

func TestProxyModeSwitchLeavesNothing(t *testing.T) {
	ktest.RequireFeature(t, kernel.FeatureVXLAN)
	s := upTestLab(t, "kdt-switch", podLab("routed", "vxlan", "cross-subnet"))
	p := s.Plan
	svc := "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {selector: {run: none}, ports: [{port: 80}]}\n"
	if _, err := Apply(context.Background(), p.Name, []byte(svc), testBins(t)); err != nil {
		t.Fatal(err)
	}
	n1 := openNS(t, p.Nodes[0].NetNS)
	wait := func(what string, cond func(string) bool) {
		t.Helper()
		ktest.Eventually(t, 15*time.Second, what, func() error {
			if st := proxyState(t, n1); !cond(st) {
				return fmt.Errorf("node n1 has:\n%s", st)
			}
			return nil
		})
	}
	wait("nftables mode programs its table", func(st string) bool { return strings.Contains(st, "kdive-proxy") })
	restartAgent(t, p, p.Nodes[0], "iptables")
	wait("iptables mode replaces nftables", func(st string) bool {
		return strings.Contains(st, ":KUBE-SERVICES") && !strings.Contains(st, "kdive-proxy")
	})
	restartAgent(t, p, p.Nodes[0], "none")
	wait("mode none leaves nothing of either", func(st string) bool { return st == "" })
}
