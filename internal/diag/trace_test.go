package diag_test

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/kdive/kdive/internal/diag"
	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/ktest"
	"github.com/kdive/kdive/internal/lab"
)

// upPresetLab brings a preset up under name and tears it down at the end.
func upPresetLab(t *testing.T, name, preset string) *lab.Status {
	t.Helper()
	ktest.RequireRoot(t)
	for _, f := range []kernel.Feature{kernel.FeatureVeth, kernel.FeatureBridge, kernel.FeatureNFTables} {
		ktest.RequireFeature(t, f)
	}
	downLeftover(t, name)
	p, raw, err := lab.Prepare(name, lab.Source{Preset: preset})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range p.Features() {
		ktest.RequireFeature(t, f)
	}
	s, err := lab.Up(context.Background(), p, lab.UpOptions{LabFile: raw, Binaries: diag.LabBins(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := lab.Down(name); err != nil && !errors.Is(err, lab.ErrNoLab) {
			t.Errorf("down %s: %v", name, err)
		}
	})
	return lab.GetStatus(context.Background(), s)
}

// podOn returns the first pod of a deployment (name prefix) on a node.
func podOn(t *testing.T, st *lab.Status, prefix, node string) string {
	t.Helper()
	for _, p := range st.Pods {
		if strings.HasPrefix(p.Name, prefix+"-") && p.Node == node {
			return p.Namespace + "/" + p.Name
		}
	}
	t.Fatalf("no %s pod on %s in %+v", prefix, node, st.Pods)
	return ""
}

// minimal traces and returns the --minimal text, retrying until want
// holds (agents program services a moment after lab up).
func minimal(t *testing.T, req diag.TraceRequest, want func(string) error) string {
	t.Helper()
	req.Inspect = diag.InspectProxy
	var out strings.Builder
	ktest.Eventually(t, 30*time.Second, fmt.Sprintf("trace %s -> %s", req.From, req.To), func() error {
		out.Reset()
		rep, err := diag.Trace(context.Background(), req)
		if err == nil {
			err = rep.WriteMinimal(&out)
		}
		if err == nil {
			err = want(out.String())
		}
		if err != nil {
			return fmt.Errorf("%w\n%s", err, out.String())
		}
		return nil
	})
	return out.String()
}

func has(subs ...string) func(string) error {
	return func(s string) error {
		for _, sub := range subs {
			if !strings.Contains(s, sub) {
				return fmt.Errorf("%q missing", sub)
			}
		}
		return nil
	}
}

// Preset D: routed pods, VXLAN only across subnets, nftables. node-1 and
// node-2 share zone-a, node-3 is in zone-b behind the router.
func TestTracePresetD(t *testing.T) {
	st := upPresetLab(t, "trcd", "D")
	client := podOn(t, st, "coredns", "node-1")
	ing2, ing3 := podOn(t, st, "ingress", "node-2"), podOn(t, st, "ingress", "node-3")
	req := func(from, to string) diag.TraceRequest { return diag.TraceRequest{Lab: "trcd", From: from, To: to} }

	out := minimal(t, req(client, ing2), has("lb=none", "pod="+ing2+" node=node-2 p=1.000 masq=no encap=direct underlay=same subnet delivered=yes"))
	t.Logf("pod -> pod, same subnet:\n%s", out)
	out = minimal(t, req(client, ing3), has("pod="+ing3+" node=node-3 p=1.000 masq=no encap=vxlan underlay=router delivered=yes"))
	t.Logf("pod -> pod, other subnet:\n%s", out)

	out = minimal(t, req(client, "default/ingress:http"), has("lb=DNAT",
		"node=node-1 p=0.333 masq=no encap=local",
		"pod="+ing2+" node=node-2 p=0.333 masq=no encap=direct underlay=same subnet delivered=yes",
		"pod="+ing3+" node=node-3 p=0.333 masq=no encap=vxlan underlay=router delivered=yes"))
	t.Logf("pod -> service:\n%s", out)

	// From the node itself the source is outside the cluster CIDR:
	// masqueraded.
	out = minimal(t, req("node-1", "default/ingress:http"), has("lb=DNAT", "node=node-3 p=0.333 masq=yes encap=vxlan"))
	t.Logf("node -> service:\n%s", out)

	// From outside to the NodePort on node-1.
	out = minimal(t, req("external", st.Nodes[0].IP+":30080"), has("lb=DNAT", "node=node-2 p=0.333 masq=yes encap=direct"))
	t.Logf("external -> NodePort:\n%s", out)

	// --probe agrees with the prediction, over TCP and UDP.
	for _, r := range []diag.TraceRequest{req(client, "default/ingress:http"), {Lab: "trcd", From: client, To: "kube-system/kube-dns:dns"}} {
		r.Probe = true
		out = minimal(t, r, has("predicted=yes"))
		t.Logf("probe:\n%s", out)
	}

	// show lb on node-1 reads the same table, with pods named.
	var lbOut strings.Builder
	if err := diag.ShowLB(context.Background(), diag.Target{Lab: "trcd", Node: "node-1"}, diag.Output{Format: diag.FormatJSON, W: &lbOut}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"mode": "nftables"`, `"name": "default/ingress:http"`, `"pod": "` + ing3 + `"`, `"node": "node-3"`, `"kind": "NodePort"`, `"probability": 0.333`} {
		if !strings.Contains(lbOut.String(), want) {
			t.Errorf("show lb -o json lacks %s:\n%s", want, lbOut.String())
		}
	}
	var lbTable strings.Builder
	if err := diag.ShowLB(context.Background(), diag.Target{Lab: "trcd", Node: "node-1"}, diag.Output{Format: diag.FormatTable, W: &lbTable}); err != nil {
		t.Fatal(err)
	}
	t.Logf("show lb:\n%s", lbTable.String())

	// The CLI, as a user runs it.
	bin := diag.LabBins(t).Kdive
	cli, err := exec.Command(bin, "trace", "--lab", "trcd", "--from", client, "--to", "default/ingress:http", "--minimal").CombinedOutput()
	if err != nil || !strings.Contains(string(cli), "lb=DNAT") {
		t.Errorf("kdive trace --minimal: %v\n%s", err, cli)
	}
	detail, err := exec.Command(bin, "trace", "--lab", "trcd", "--from", client, "--to", ing3).CombinedOutput()
	if err != nil || !strings.Contains(string(detail), "VXLAN") || !strings.Contains(string(detail), "decapsulated by vxlan.kdive") {
		t.Errorf("kdive trace (detailed): %v\n%s", err, detail)
	}
	t.Logf("detailed:\n%s", detail)
}

// Presets A (routed, IPIP across subnets, IPVS), B (routed, IPIP always,
// iptables) and C (bridge, per-peer IPIP tunnels across subnets, iptables)
// need the ipip module: they run in the test VM.
func TestTraceIPIPPresets(t *testing.T) {
	for _, tc := range []struct {
		preset                 string
		sameSubnet, crossEncap string
	}{
		{"A", "encap=direct underlay=same subnet", "encap=ipip underlay=router"},
		{"B", "encap=ipip underlay=same subnet", "encap=ipip underlay=router"},
		{"C", "encap=direct underlay=same subnet", "encap=ipip underlay=router"},
	} {
		t.Run(tc.preset, func(t *testing.T) {
			name := "trc" + strings.ToLower(tc.preset)
			st := upPresetLab(t, name, tc.preset)
			client := podOn(t, st, "coredns", "node-1")
			ing2, ing3 := podOn(t, st, "ingress", "node-2"), podOn(t, st, "ingress", "node-3")
			req := func(to string) diag.TraceRequest { return diag.TraceRequest{Lab: name, From: client, To: to} }
			t.Log(minimal(t, req(ing2), has("node=node-2 p=1.000 masq=no "+tc.sameSubnet+" delivered=yes")))
			t.Log(minimal(t, req(ing3), has("node=node-3 p=1.000 masq=no "+tc.crossEncap+" delivered=yes")))
			svc := req("default/ingress:http")
			svc.Probe = true
			t.Log(minimal(t, svc, has("lb=DNAT", "node=node-1 p=0.333 masq=no encap=local",
				"node=node-2 p=0.333 masq=no "+tc.sameSubnet, "node=node-3 p=0.333 masq=no "+tc.crossEncap, "predicted=yes")))
			checkShow(t, name, st, tc.preset, ing3)
		})
	}
}

// checkShow checks every kind of show on node-1 of an IPIP preset against
// the lab's known topology.
func checkShow(t *testing.T, labName string, st *lab.Status, preset, remotePod string) {
	t.Helper()
	ctx := context.Background()
	target := diag.Target{Lab: labName, Node: "node-1"}
	routes, err := diag.Routes(ctx, target)
	if err != nil {
		t.Fatal(err)
	}
	blockEncap := map[string]string{}
	for _, r := range routes.Routes {
		if r.Node != "" && r.Node != "node-1" && r.Owner == "kdive-agent" {
			blockEncap[r.Node] = r.Encap
		}
		if r.Kind == "foreign" {
			t.Errorf("preset %s: foreign route on node-1: %+v", preset, r)
		}
	}
	wantSame := "none"
	if preset == "B" {
		wantSame = "ipip"
	}
	if blockEncap["node-2"] != wantSame || blockEncap["node-3"] != "ipip" {
		t.Errorf("preset %s: node-1 reaches node-2's block with %q (want %q), node-3's with %q (want ipip)\n%+v",
			preset, blockEncap["node-2"], wantSame, blockEncap["node-3"], routes.Routes)
	}
	links, err := diag.Links(ctx, target)
	if err != nil {
		t.Fatal(err)
	}
	roles := map[string]bool{}
	for _, l := range links.Links {
		roles[l.Role] = true
		if l.Role == diag.LinkForeign {
			t.Errorf("preset %s: foreign link on node-1: %+v", preset, l)
		}
	}
	if !roles[diag.LinkTunnel] || !roles[diag.LinkUplink] || (preset == "A") != roles[diag.LinkIPVS] || (preset == "C") != roles[diag.LinkBridge] {
		t.Errorf("preset %s: link roles %v", preset, roles)
	}
	blocks, err := diag.Blocks(ctx, diag.Target{Lab: labName})
	if err != nil {
		t.Fatal(err)
	}
	perNode := map[string]int{}
	for _, p := range st.Pods {
		perNode[p.Node]++
	}
	for _, b := range blocks.Blocks {
		if b.InUse == nil || *b.InUse != perNode[b.Node] {
			t.Errorf("preset %s: block %s of %s in use %v, want %d pods", preset, b.Block, b.Node, b.InUse, perNode[b.Node])
		}
	}
	var lb strings.Builder
	if err := diag.ShowLB(ctx, target, diag.Output{Format: diag.FormatJSON, W: &lb}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"name": "default/ingress:http"`, `"pod": "` + remotePod + `"`, `"kind": "NodePort"`, `"probability": 0.333`} {
		if !strings.Contains(lb.String(), want) {
			t.Errorf("preset %s: show lb lacks %s:\n%s", preset, want, lb.String())
		}
	}
}

// downLeftover takes down a lab of this name an earlier run left behind;
// there being none is what usually happens.
func downLeftover(t *testing.T, name string) {
	t.Helper()
	if err := lab.Down(name); err != nil && !errors.Is(err, lab.ErrNoLab) {
		t.Fatalf("down %s, left by an earlier run: %v", name, err)
	}
}
