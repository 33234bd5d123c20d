package lab

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/ktest"
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

// restartAgent kills node n's agent and starts it again in another mode.
func restartAgent(t *testing.T, p *Plan, node NodePlan, mode string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(p.nodeDir(node.Name), "agent.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	_ = syscall.Kill(pid, syscall.SIGTERM)
	for i := 0; i < 100 && processAlive(pid); i++ {
		time.Sleep(20 * time.Millisecond)
	}
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
		deadline := time.Now().Add(15 * time.Second)
		for {
			st := proxyState(t, n1)
			if cond(st) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s; node n1 has:\n%s", what, st)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	wait("nftables mode programs its table", func(st string) bool { return strings.Contains(st, "kdive-proxy") })
	restartAgent(t, p, p.Nodes[0], "iptables")
	wait("iptables mode replaces nftables", func(st string) bool {
		return strings.Contains(st, ":KUBE-SERVICES") && !strings.Contains(st, "kdive-proxy")
	})
	restartAgent(t, p, p.Nodes[0], "none")
	wait("mode none leaves nothing of either", func(st string) bool { return st == "" })
}
