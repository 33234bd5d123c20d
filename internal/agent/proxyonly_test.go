package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/kdive/kdive/internal/cni"
	"github.com/kdive/kdive/internal/kernel/ktest"
	"github.com/kdive/kdive/internal/model"
)

// TestAgentProxyOnly: with podNetwork.interface none the agent is a
// kube-proxy beside another CNI. Its Node has an InternalIP and no
// spec.podCIDR (a CNI with its own IPAM never sets one), yet the Service
// is programmed; the agent writes no CNI config and programs no route,
// tunnel or device of the pod network, not even toward a peer that has a
// pod CIDR, and its syncs do not fail.
func TestAgentProxyOnly(t *testing.T) {
	for _, mode := range []string{"nftables", "iptables"} {
		t.Run(mode, func(t *testing.T) {
			bed := newAgentBed(t, mode, time.Minute)
			bed.cfg.PodNetwork = model.PodNetwork{Interface: model.InterfaceNone}
			bed.cfg.Default()
			if err := bed.cfg.Validate(); err != nil {
				t.Fatal(err)
			}
			bed.nodes = []corev1.Node{testNode("n1", "192.0.2.10", ""), testNode("n2", "192.0.2.11", "10.244.2.0/24")}
			bed.addService("web", "10.96.0.30", "10.244.2.5")
			bed.run()
			programmed := func() bool {
				if mode == "nftables" {
					return strings.Contains(bed.nftTable(), "10.96.0.30 . tcp . 80")
				}
				out, _ := bed.node.Run(t.Context(), "", "iptables-save", "-t", "nat")
				return strings.Contains(out, "-d 10.96.0.30/32")
			}
			ktest.Eventually(t, 20*time.Second, "the service programmed on a node without a pod CIDR", ktest.Holds(programmed))
			// kube-proxy's conntrack timeouts, set in the node's namespace
			// after the first sync (the kernel's are 5 days and 60s).
			for key, want := range map[string]string{
				"net/netfilter/nf_conntrack_tcp_timeout_established": "86400",
				"net/netfilter/nf_conntrack_tcp_timeout_close_wait":  "3600",
			} {
				ktest.Eventually(t, 10*time.Second, key+" = "+want, ktest.Holds(func() bool {
					got, err := bed.node.ReadSysctl(key)
					return err == nil && got == want
				}))
			}

			// A sync that also tried the pod network would fail for the
			// missing pod CIDR and retry, however the proxy fared: wait
			// until a sync has ended, one way or the other.
			ktest.Eventually(t, 10*time.Second, "a sync to end", ktest.Holds(func() bool {
				return len(bed.logs.since(time.Time{}, "synced"))+len(bed.logs.since(time.Time{}, "sync failed; retrying")) > 0
			}))
			for _, r := range bed.logs.since(time.Time{}, "sync failed; retrying") {
				t.Errorf("sync failed: %v", r.Attrs["err"])
			}
			if _, err := os.Stat(filepath.Join(bed.cfg.CNI.ConfDir, cni.ConfListFile)); !os.IsNotExist(err) {
				t.Errorf("the agent wrote a CNI config (stat: %v); another CNI owns the pods", err)
			}
			if r := routesText(t, bed.node); r != "" {
				t.Errorf("the agent programmed pod-network routes:\n%s", r)
			}
			links, err := bed.node.Links()
			if err != nil {
				t.Fatal(err)
			}
			for _, l := range links {
				if l.Name != "lo" && l.Name != "eth0" && !strings.HasPrefix(l.Name, "kube-ipvs") {
					t.Errorf("the agent created link %s", l.Name)
				}
			}
		})
	}
}

// TestAgentProxyBeforePodCIDR: with the pod network on, a node whose
// spec.podCIDR is not assigned yet still gets its Services programmed, as
// kube-proxy's would, and is healthy; the pod network waits (no CNI
// config) and follows as soon as the block is assigned.
func TestAgentProxyBeforePodCIDR(t *testing.T) {
	bed := newAgentBed(t, "nftables", time.Minute)
	bed.nodes = []corev1.Node{testNode("n1", "192.0.2.10", ""), testNode("n2", "192.0.2.11", "10.244.2.0/24")}
	bed.addService("web", "10.96.0.30", "10.244.2.5")
	bed.run()
	ktest.Eventually(t, 20*time.Second, "the service programmed on a node without a pod CIDR", ktest.Holds(func() bool {
		return strings.Contains(bed.nftTable(), "10.96.0.30 . tcp . 80")
	}))
	// The sync that programmed it ends waiting for the pod network.
	ktest.Eventually(t, 10*time.Second, `the agent's "waiting" for the pod network`, ktest.Holds(func() bool {
		return len(bed.logs.since(time.Time{}, "waiting")) > 0
	}))
	// Waiting for the cluster is not being broken: /healthz is 200.
	bed.checkHealthy()
	conf := filepath.Join(bed.cfg.CNI.ConfDir, cni.ConfListFile)
	if _, err := os.Stat(conf); !os.IsNotExist(err) {
		t.Errorf("a CNI config before the node has a pod CIDR (stat: %v)", err)
	}

	bed.nodes[0] = testNode("n1", "192.0.2.10", "10.244.1.0/24")
	bed.apply()
	ktest.Eventually(t, 20*time.Second, "the CNI config once the pod CIDR is assigned", func() error {
		_, err := os.Stat(conf)
		return err
	})
	ktest.Eventually(t, 20*time.Second, "the blackhole route of the node's block", ktest.Holds(func() bool {
		return strings.Contains(routesText(t, bed.node), "blackhole 10.244.1.0/24")
	}))
	if !strings.Contains(bed.nftTable(), "10.96.0.30 . tcp . 80") {
		t.Error("the service went when the pod network came")
	}
}
