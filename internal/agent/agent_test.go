package agent

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kdive/kdive/internal/cni"
	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/ktest"
	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/source/labstore"
)

// Address plan: the node under test n1 is 192.0.2.10/24 on eth0; n2 shares
// its subnet, n3 is in 198.51.100.0/24; pod blocks 10.244.N.0/24.

func testNode(name, ip, cidr string) corev1.Node {
	return corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       corev1.NodeSpec{PodCIDR: cidr},
		Status:     corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}}},
	}
}

func routesText(t *testing.T, ns *kernel.NetNS) string {
	t.Helper()
	rs, err := ns.Routes()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range rs {
		if r.Protocol == kernel.RouteProtocolAgent {
			out = append(out, r.String())
		}
	}
	return strings.Join(out, "\n")
}

func TestAgentReconcilesNodes(t *testing.T) {
	ktest.RequireFeature(t, kernel.FeatureVXLAN)
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
	dir := t.TempDir()
	store := labstore.Open(filepath.Join(dir, "store"))
	setNodes := func(nodes ...corev1.Node) {
		t.Helper()
		if err := store.Update(func(s *labstore.Snapshot) error { s.Nodes = nodes; return nil }); err != nil {
			t.Fatal(err)
		}
	}
	n1 := testNode("n1", "192.0.2.10", "10.244.1.0/24")
	n2 := testNode("n2", "192.0.2.11", "10.244.2.0/24")
	n3 := testNode("n3", "198.51.100.10", "10.244.3.0/24")
	setNodes(n1, n2, n3)

	cfg := &Configuration{
		NodeName:         "n1",
		ClientConnection: ClientConnection{LabStore: store.Dir()},
		PodNetwork:       model.PodNetwork{Interface: model.InterfaceRouted, Encap: model.EncapVXLAN, EncapPolicy: model.EncapCrossSubnet},
		CNI:              CNIConfig{ConfDir: filepath.Join(dir, "net.d"), DataDir: filepath.Join(dir, "ipam")},
		Proxy:            ProxyConfig{Mode: "none"},
		SyncPeriod:       metav1.Duration{Duration: time.Second},
		MinSyncPeriod:    metav1.Duration{Duration: 10 * time.Millisecond},
	}
	cfg.Default()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- New(Options{Config: cfg, NetNS: node}).Run(ctx) }()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		}
	}
	defer stop()

	// The CNI config: routed, this node's block, the pod MTU 1500-50.
	conf := filepath.Join(cfg.CNI.ConfDir, cni.ConfListFile)
	ktest.Eventually(t, 10*time.Second, "the conflist", func() error { _, err := os.Stat(conf); return err })
	b, err := os.ReadFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"podCIDR": "10.244.1.0/24"`, `"mtu": 1450`, `"mode": "routed"`, `"type": "kdive"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("conflist lacks %s:\n%s", want, b)
		}
	}
	hasRoute := func(want string) func() error {
		return func() error {
			if rt := routesText(t, node); !strings.Contains(rt, want) {
				return fmt.Errorf("routes:\n%s", rt)
			}
			return nil
		}
	}
	lacks := func(text func() string, unwanted string) func() error {
		return func() error {
			if got := text(); strings.Contains(got, unwanted) {
				return fmt.Errorf("%s still in:\n%s", unwanted, got)
			}
			return nil
		}
	}
	ktest.Eventually(t, 10*time.Second, "n2's block direct, same subnet", hasRoute("10.244.2.0/24 via 192.0.2.11 dev eth0"))
	ktest.Eventually(t, 10*time.Second, "n3's block over VXLAN, across subnets", hasRoute("10.244.3.0/24 via 10.244.3.0 dev vxlan.kdive onlink"))
	ktest.Eventually(t, 10*time.Second, "the blackhole for n1's own block", hasRoute("blackhole 10.244.1.0/24"))

	// n3's VTEP is known to the VXLAN device.
	vxlanState := func() string {
		fdb, _ := node.FDB("vxlan.kdive")
		nbs, _ := node.Neighbors("vxlan.kdive")
		var out []string
		for _, e := range fdb {
			out = append(out, e.String())
		}
		for _, nb := range nbs {
			out = append(out, nb.IP.String()+" "+nb.MAC.String())
		}
		return strings.Join(out, "\n")
	}
	n3VTEP := "0a:6b:c6:33:64:0a"
	ktest.Eventually(t, 10*time.Second, "n3's FDB entry and neighbour", func() error {
		if v := vxlanState(); !strings.Contains(v, n3VTEP+" dst 198.51.100.10") || !strings.Contains(v, "10.244.3.0 "+n3VTEP) {
			return fmt.Errorf("FDB and neighbours:\n%s", v)
		}
		return nil
	})

	// A peer changes its address; another goes away, leaving nothing.
	n2.Status.Addresses[0].Address = "192.0.2.12"
	setNodes(n1, n2)
	ktest.Eventually(t, 10*time.Second, "n2's new address", hasRoute("10.244.2.0/24 via 192.0.2.12 dev eth0"))
	ktest.Eventually(t, 10*time.Second, "n3's route gone", lacks(func() string { return routesText(t, node) }, "10.244.3.0/24"))
	ktest.Eventually(t, 10*time.Second, "n3's FDB entry and neighbour gone", lacks(vxlanState, n3VTEP))

	// n3 comes back with another block: only the new block is routed.
	n3.Spec.PodCIDR = "10.244.7.0/24"
	setNodes(n1, n2, n3)
	ktest.Eventually(t, 10*time.Second, "n3's new block", hasRoute("10.244.7.0/24 via 10.244.7.0 dev vxlan.kdive onlink"))
	ktest.Eventually(t, 10*time.Second, "n3's new neighbour", func() error {
		if v := vxlanState(); !strings.Contains(v, "10.244.7.0 "+n3VTEP) {
			return fmt.Errorf("FDB and neighbours:\n%s", v)
		}
		return nil
	})
	if rt := routesText(t, node); strings.Contains(rt, "10.244.3.0") {
		t.Errorf("stale route of n3's old block:\n%s", rt)
	}
	if v := vxlanState(); strings.Contains(v, "10.244.3.0") {
		t.Errorf("stale neighbour of n3's old block:\n%s", v)
	}

	// Health and metrics, kube-proxy style, served in the node's namespace.
	getIn := func(url string) (int, string) {
		c := http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: node.DialContext}}
		resp, err := c.Get(url)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := getIn("http://127.0.0.1:10256/healthz"); code != 200 || !strings.Contains(body, `"lastUpdated"`) {
		t.Errorf("/healthz: %d %s", code, body)
	}

	// A route deleted by hand comes back with the next periodic sync,
	// counted as a drift repair.
	if err := node.DeleteRoute(kernel.Route{Dst: netip.MustParsePrefix("10.244.2.0/24"), Gateway: netip.MustParseAddr("192.0.2.12"), Dev: "eth0"}); err != nil {
		t.Fatal(err)
	}
	ktest.Eventually(t, 10*time.Second, "the deleted route back", hasRoute("10.244.2.0/24 via 192.0.2.12 dev eth0"))
	ktest.Eventually(t, 10*time.Second, "the repair counted", func() error {
		if _, m := getIn("http://127.0.0.1:10249/metrics"); !strings.Contains(m, `kdive_drift_repairs_total{part="podnet"} 1`) {
			return fmt.Errorf("metrics:\n%s", m)
		}
		return nil
	})
	if _, m := getIn("http://127.0.0.1:10249/metrics"); !strings.Contains(m, `kdive_ipam_addresses_total{block="10.244.1.0/24",node="n1"} 253`) {
		t.Errorf("metrics lack the IPAM size:\n%s", m)
	}

	// kdive agent --cleanup leaves nothing of kdive on the node.
	stop()
	if err := Cleanup(context.Background(), cfg, node); err != nil {
		t.Fatal(err)
	}
	if rt := routesText(t, node); rt != "" {
		t.Errorf("routes left after cleanup:\n%s", rt)
	}
	if _, err := node.LinkByName("vxlan.kdive"); err == nil {
		t.Error("vxlan.kdive left after cleanup")
	}
	if _, err := os.Stat(conf); !os.IsNotExist(err) {
		t.Errorf("conflist left after cleanup: %v", err)
	}
}
