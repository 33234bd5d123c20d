package diag

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/ktest"
	"github.com/kdive/kdive/internal/lab"
)

// TestShowLabPresetD brings up preset D (routed, VXLAN cross-subnet,
// nftables) and checks show's view of node-1 against the lab's known
// topology: node-2 (same subnet) is reached directly, node-3 (other
// subnet) through VXLAN, node-1's own block is blackholed, each of its pods
// has its /32 and veth, and each node's block counts its pods.
func TestShowLabPresetD(t *testing.T) {
	ktest.RequireFeature(t, kernel.FeatureVeth)
	ktest.RequireFeature(t, kernel.FeatureBridge)
	ktest.RequireFeature(t, kernel.FeatureVXLAN)
	ktest.RequireFeature(t, kernel.FeatureNFTables)
	bins := labBins(t)
	const name = "kdt-show"
	if err := lab.Down(name); err != nil && !errors.Is(err, lab.ErrNoLab) {
		t.Fatalf("down %s, left by an earlier run: %v", name, err)
	}
	plan, raw, err := lab.Prepare(name, lab.Source{Preset: "D"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := lab.Up(ctx, plan, lab.UpOptions{LabFile: raw, Binaries: bins}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := lab.Down(name); err != nil && !errors.Is(err, lab.ErrNoLab) {
			t.Errorf("down %s: %v", name, err)
		}
	})
	st, err := lab.Load(name)
	if err != nil {
		t.Fatal(err)
	}
	status := lab.GetStatus(ctx, st)
	podsOn := map[string][]lab.PodStatus{}
	for _, p := range status.Pods {
		if p.IP == "" {
			t.Fatalf("pod %s/%s is not attached", p.Namespace, p.Name)
		}
		podsOn[p.Node] = append(podsOn[p.Node], p)
	}
	if len(podsOn["node-1"]) == 0 {
		t.Fatal("preset D has no pod on node-1")
	}
	target := Target{Lab: name, Node: "node-1"}

	// The agent programs its routes a moment after lab up.
	var routes *RoutesReport
	ktest.Eventually(t, 30*time.Second, "node-1's agent to program its routes", func() error {
		var err error
		if routes, err = Routes(ctx, target); err != nil {
			return err
		}
		if routeByDst(routes.Routes, "10.0.3.0/24") == nil || routeByDst(routes.Routes, "10.0.2.0/24") == nil ||
			routeByDst(routes.Routes, "10.0.1.0/24") == nil {
			return fmt.Errorf("routes %+v", routes.Routes)
		}
		return nil
	})
	checkShowRoutes(t, routes, podsOn["node-1"])

	links, err := Links(ctx, target)
	if err != nil {
		t.Fatal(err)
	}
	checkShowLinks(t, links, routes, podsOn["node-1"])

	pods, err := Pods(ctx, target)
	if err != nil {
		t.Fatal(err)
	}
	if len(pods.Pods) != len(podsOn["node-1"]) {
		t.Errorf("show pods: %d rows, want node-1's %d pods: %+v", len(pods.Pods), len(podsOn["node-1"]), pods.Pods)
	}
	for _, want := range podsOn["node-1"] {
		i := slices.IndexFunc(pods.Pods, func(r PodRow) bool { return r.Namespace == want.Namespace && r.Name == want.Name })
		if i < 0 {
			t.Errorf("show pods: no row for %s/%s", want.Namespace, want.Name)
			continue
		}
		r := pods.Pods[i]
		pr := routeByDst(routes.Routes, want.IP+"/32")
		if r.IP != want.IP || pr == nil || r.HostInterface != pr.Dev || r.ContainerID == "" || r.IfName != "eth0" ||
			r.NetNS != filepath.Join(kernel.NetNSDir, lab.PodNetNS(name, want.Namespace, want.Name)) || len(r.Problems) > 0 {
			t.Errorf("show pods: %+v; want IP %s on the /32 route's veth %+v", r, want.IP, pr)
		}
		if _, err := os.Stat(r.NetNS); err != nil {
			t.Errorf("pod netns %s: %v", r.NetNS, err)
		}
	}

	blocks, err := Blocks(ctx, target)
	if err != nil {
		t.Fatal(err)
	}
	if len(blocks.Blocks) != len(plan.Nodes) {
		t.Errorf("show blocks: %+v, want one per node", blocks.Blocks)
	}
	for _, b := range blocks.Blocks {
		n, _ := plan.Node(b.Node)
		if b.Block != n.PodCIDR.String() || b.InUse == nil || *b.InUse != len(podsOn[b.Node]) || b.Capacity != 253 ||
			b.Local != (b.Node == "node-1") || len(b.Problems) > 0 {
			t.Errorf("show blocks: %+v; want %s of %s with %d in use", b, n.PodCIDR, b.Node, len(podsOn[b.Node]))
		}
	}

	// Once through the command line, as scripts use it.
	out, err := exec.Command(bins.Kdive, "show", "routes", "--lab", name, "--node", "node-1", "-o", "json").Output()
	if err != nil {
		t.Fatalf("kdive show routes -o json: %v", err)
	}
	var cli RoutesReport
	if err := json.Unmarshal(out, &cli); err != nil {
		t.Fatalf("kdive show routes -o json: %v\n%s", err, out)
	}
	if cli.Lab != name || cli.Node != "node-1" {
		t.Errorf("kdive show routes -o json: lab %q node %q", cli.Lab, cli.Node)
	}
	checkShowRoutes(t, &cli, podsOn["node-1"])
	for _, field := range []string{`"route":`, `"kind":`, `"owner":`, `"meaning":`, `"encap": "vxlan"`, `"crossSubnet": true`} {
		if !strings.Contains(string(out), field) {
			t.Errorf("kdive show routes -o json lacks %s", field)
		}
	}
}

func routeByDst(rows []RouteRow, dst string) *RouteRow {
	i := slices.IndexFunc(rows, func(r RouteRow) bool { return r.Dst == dst })
	if i < 0 {
		return nil
	}
	return &rows[i]
}

func checkShowRoutes(t *testing.T, r *RoutesReport, pods []lab.PodStatus) {
	t.Helper()
	vx := routeByDst(r.Routes, "10.0.3.0/24")
	if vx == nil || vx.Kind != RoutePeerBlock || vx.Node != "node-3" || vx.Encap != "vxlan" || vx.CrossSubnet == nil || !*vx.CrossSubnet ||
		vx.Meaning != "pod block 10.0.3.0/24 of node-3 via vxlan.kdive (VXLAN to 172.20.2.10, cross-subnet)" {
		t.Errorf("route to node-3's block: %+v", vx)
	}
	direct := routeByDst(r.Routes, "10.0.2.0/24")
	if direct == nil || direct.Kind != RoutePeerBlock || direct.Node != "node-2" || direct.Encap != "none" || direct.CrossSubnet == nil || *direct.CrossSubnet ||
		direct.Meaning != "pod block 10.0.2.0/24 of node-2 via 172.20.1.11 (direct, same subnet)" {
		t.Errorf("route to node-2's block: %+v", direct)
	}
	bh := routeByDst(r.Routes, "10.0.1.0/24")
	if bh == nil || bh.Kind != RouteOwnBlock || !bh.Blackhole || bh.Owner != OwnerAgent || bh.Node != "node-1" {
		t.Errorf("node-1's blackhole: %+v", bh)
	}
	for _, p := range pods {
		pr := routeByDst(r.Routes, p.IP+"/32")
		if pr == nil || pr.Kind != RoutePod || pr.Owner != OwnerCNI || pr.Pod != p.Namespace+"/"+p.Name || !strings.HasPrefix(pr.Dev, "cali") {
			t.Errorf("route to pod %s/%s (%s): %+v", p.Namespace, p.Name, p.IP, pr)
		}
	}
	for _, row := range r.Routes {
		if row.Kind == RouteForeign {
			t.Errorf("a lab node's route is foreign: %+v", row)
		}
	}
}

func checkShowLinks(t *testing.T, r *LinksReport, routes *RoutesReport, pods []lab.PodStatus) {
	t.Helper()
	byName := map[string]LinkRow{}
	for _, l := range r.Links {
		byName[l.Name] = l
		if l.Role == LinkForeign {
			t.Errorf("a lab node's link is foreign: %+v", l)
		}
	}
	if l := byName["eth0"]; l.Role != LinkUplink || !slices.Contains(l.Addrs, "172.20.1.10/24") {
		t.Errorf("eth0: %+v", l)
	}
	if l := byName["vxlan.kdive"]; l.Role != LinkVXLAN || len(l.Peers) != 1 || l.Peers[0].Node != "node-3" || l.Peers[0].IP != "172.20.2.10" {
		t.Errorf("vxlan.kdive: %+v", l)
	}
	for _, p := range pods {
		pr := routeByDst(routes.Routes, p.IP+"/32")
		if pr == nil {
			continue // reported by checkShowRoutes
		}
		if l := byName[pr.Dev]; l.Role != LinkPodVeth || l.Pod != p.Namespace+"/"+p.Name || !strings.HasSuffix(l.Attachment, "/eth0") {
			t.Errorf("veth of pod %s/%s: %+v", p.Namespace, p.Name, l)
		}
	}
}
