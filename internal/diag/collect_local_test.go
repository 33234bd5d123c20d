package diag

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kdive/kdive/internal/cni"
	"github.com/kdive/kdive/internal/cni/ipam"
	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/podnet"
)

// A real node without the API server: the conflist, the IPAM store and a
// runtime's libcni cache name this node's block and pods.
func TestLocalTopology(t *testing.T) {
	dir := t.TempDir()
	confDir, dataDir, cacheDir := filepath.Join(dir, "net.d"), filepath.Join(dir, "ipam"), filepath.Join(dir, "cache")
	conf, err := cni.NewConfList(cni.ConfListOptions{Mode: model.InterfaceRouted, PodCIDR: pfx("10.0.7.0/24"), MTU: 1450, DataDir: dataDir})
	if err != nil {
		t.Fatal(err)
	}
	if err := cni.WriteConfList(confDir, conf); err != nil {
		t.Fatal(err)
	}
	store, err := ipam.New(dataDir, pfx("10.0.7.0/24"))
	if err != nil {
		t.Fatal(err)
	}
	ip, err := store.Allocate(ipam.Attachment{ContainerID: "abc123", IfName: "eth0"})
	if err != nil {
		t.Fatal(err)
	}
	// What containerd's libcni writes on ADD.
	if err := os.MkdirAll(filepath.Join(cacheDir, "results"), 0o755); err != nil {
		t.Fatal(err)
	}
	entry, _ := json.Marshal(map[string]any{
		"kind": "cniCacheV1", "containerId": "abc123", "ifName": "eth0", "networkName": "kdive", "netns": "/var/run/netns/cni-1",
		"config":  []byte("{}"),
		"cniArgs": [][2]string{{"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", "web-0"}},
	})
	if err := os.WriteFile(filepath.Join(cacheDir, "results", "kdive-abc123-eth0"), entry, 0o600); err != nil {
		t.Fatal(err)
	}
	ks := &KernelState{
		Links: []kernel.Link{
			{Index: 1, Name: "lo", Type: "device"},
			{Index: 2, Name: "ens3", Type: "device", Addrs: []netip.Prefix{pfx("192.0.2.5/24")}},
			{Index: 3, Name: "caliabc", Type: "veth", Alias: "kdive-cni:abc123/eth0"},
		},
		Tunnels: []kernel.Tunnel{{Name: podnet.VXLANDevice, Kind: kernel.TunnelVXLAN, Local: addr("192.0.2.5")}},
		Routes: []kernel.Route{
			{Gateway: addr("192.0.2.1"), Dev: "ens3", Protocol: 16},
			{Dst: pfx("10.0.7.0/24"), Blackhole: true, Protocol: kernel.RouteProtocolAgent},
			{Dst: netip.PrefixFrom(ip, 32), Dev: "caliabc", Protocol: kernel.RouteProtocolCNI},
			{Dst: pfx("10.0.8.0/24"), Gateway: addr("10.0.8.0"), Dev: podnet.VXLANDevice, OnLink: true, Protocol: kernel.RouteProtocolAgent},
		},
	}
	topo, err := Target{Node: "worker-7", CNIConfDir: confDir, CNICacheDir: cacheDir}.localTopology(ks)
	if err != nil {
		t.Fatal(err)
	}
	n := topo.Nodes[0]
	if topo.Node != "worker-7" || n.IP != addr("192.0.2.5") || n.Subnet != pfx("192.0.2.0/24") || n.PodCIDR != pfx("10.0.7.0/24") ||
		n.IPAM == nil || len(n.IPAM.Allocations) != 1 || topo.Network.Interface != model.InterfaceRouted {
		t.Fatalf("topology %+v, node %+v", topo, n)
	}
	if len(topo.Pods) != 1 || topo.Pods[0].FullName() != "default/web-0" || topo.Pods[0].IP != ip || topo.Pods[0].NetNS != "/var/run/netns/cni-1" {
		t.Fatalf("pods %+v", topo.Pods)
	}
	pods := AnnotatePods(topo, ks)
	if len(pods) != 1 || pods[0].Name != "web-0" || pods[0].HostInterface != "caliabc" || pods[0].ContainerID != "abc123" || len(pods[0].Problems) != 0 {
		t.Errorf("pods %+v", pods)
	}
	for _, r := range AnnotateRoutes(topo, ks) {
		switch r.Dst {
		case "10.0.7.0/24":
			if r.Kind != RouteOwnBlock || r.Node != "worker-7" {
				t.Errorf("own block %+v", r)
			}
		case "10.0.8.0/24":
			if r.Kind != RoutePeerBlock || !strings.HasPrefix(r.Meaning, "pod block 10.0.8.0/24 of an unknown node via vxlan.kdive (VXLAN)") {
				t.Errorf("peer block of an unknown node: %+v", r)
			}
		case "default":
			if r.Kind != RouteForeign {
				t.Errorf("default route %+v", r)
			}
		}
	}
	// Without a conflist the block is unknown, and the report says so.
	topo, err = Target{Node: "worker-7", CNIConfDir: filepath.Join(dir, "none"), CNICacheDir: cacheDir}.localTopology(ks)
	if err != nil {
		t.Fatal(err)
	}
	if topo.Nodes[0].PodCIDR.IsValid() || !strings.Contains(strings.Join(topo.Notes, "\n"), "no kdive CNI config") {
		t.Errorf("without conflist: %+v", topo)
	}
}
