package agent

import (
	"context"
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

// The DaemonSet's init step: the plugin installed atomically, and the
// conflist written as the agent writes it once the node has a pod CIDR.
func TestInstallCNI(t *testing.T) {
	node, peer := ktest.NewNetNS(t), ktest.NewNetNS(t)
	if err := node.AddVeth("eth0", kernel.LinkAttrs{MTU: 1500}, peer, "eth0", kernel.LinkAttrs{}); err != nil {
		t.Fatal(err)
	}
	if err := node.AddAddr("eth0", mustPrefix("192.0.2.10/24")); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	plugin := filepath.Join(dir, "kdive-cni")
	if err := os.WriteFile(plugin, []byte("#!/bin/sh\necho plugin\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	store := labstore.Open(filepath.Join(dir, "store"))
	n1 := testNode("n1", "192.0.2.10", "")
	if err := store.Update(func(s *labstore.Snapshot) error { s.Nodes = []corev1.Node{n1}; return nil }); err != nil {
		t.Fatal(err)
	}
	cfg := &Configuration{
		NodeName:         "n1",
		ClientConnection: ClientConnection{LabStore: store.Dir()},
		PodNetwork:       model.PodNetwork{Interface: model.InterfaceRouted, Encap: model.EncapVXLAN, EncapPolicy: model.EncapCrossSubnet},
		CNI:              CNIConfig{ConfDir: filepath.Join(dir, "net.d"), DataDir: filepath.Join(dir, "ipam")},
		Proxy:            ProxyConfig{Mode: "none"},
		SyncPeriod:       metav1.Duration{Duration: time.Second},
	}
	cfg.Default()
	bin := filepath.Join(dir, "opt-cni-bin")
	ctx := context.Background()

	// No pod CIDR yet: the plugin is installed, the wait times out naming
	// what is missing, and no conflist is written.
	err := InstallCNI(ctx, cfg, InstallOptions{Plugin: plugin, BinDir: bin, Wait: 1500 * time.Millisecond, NetNS: node})
	if err == nil || !strings.Contains(err.Error(), "no spec.podCIDR yet") {
		t.Errorf("without a pod CIDR: err = %v, want one saying the node has no spec.podCIDR yet", err)
	}
	st, err := os.Stat(filepath.Join(bin, cni.PluginType))
	if err != nil || st.Mode().Perm() != 0o755 {
		t.Fatalf("installed plugin: %v, %v", st, err)
	}
	if b, _ := os.ReadFile(filepath.Join(bin, cni.PluginType)); string(b) != "#!/bin/sh\necho plugin\n" {
		t.Errorf("installed plugin content %q", b)
	}
	if ents, _ := os.ReadDir(bin); len(ents) != 1 {
		t.Errorf("bin dir holds %d entries, want only the plugin (no temporary file left)", len(ents))
	}
	conf := filepath.Join(cfg.CNI.ConfDir, cni.ConfListFile)
	if _, err := os.Stat(conf); !os.IsNotExist(err) {
		t.Errorf("conflist written without a pod CIDR: %v", err)
	}

	// The controller-manager assigns the block while install-cni waits.
	go func() {
		time.Sleep(500 * time.Millisecond) // not a wait: the assignment comes later, as it would
		n1.Spec.PodCIDR = "10.244.1.0/24"
		if err := store.Update(func(s *labstore.Snapshot) error { s.Nodes = []corev1.Node{n1}; return nil }); err != nil {
			t.Error(err)
		}
	}()
	t0 := time.Now()
	if err := InstallCNI(ctx, cfg, InstallOptions{Plugin: plugin, BinDir: bin, Wait: 20 * time.Second, NetNS: node}); err != nil {
		t.Fatal(err)
	}
	t.Logf("took %s", time.Since(t0))
	b, err := os.ReadFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	want, err := cni.NewConfList(cni.ConfListOptions{Mode: model.InterfaceRouted, PodCIDR: mustPrefix("10.244.1.0/24"), MTU: 1450, DataDir: cfg.CNI.DataDir})
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != string(want) {
		t.Errorf("conflist:\n%s\nwant what the agent writes:\n%s", b, want)
	}

	// A missing plugin is an error naming the destination.
	err = InstallCNI(ctx, cfg, InstallOptions{Plugin: filepath.Join(dir, "nope"), BinDir: bin, Wait: time.Second, NetNS: node})
	if err == nil || !strings.Contains(err.Error(), filepath.Join(bin, cni.PluginType)) {
		t.Errorf("missing plugin: err = %v", err)
	}
}

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }
