package cni_test

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/kdive/kdive/internal/cni"
	"github.com/kdive/kdive/internal/kernel/nft"
	"github.com/kdive/kdive/internal/model"
)

// guarded lists the ports of the node's anti-spoofing table and the
// addresses each may send from.
func guarded(t *testing.T, h *harness) map[string][]string {
	t.Helper()
	g := nft.NewPortGuard(h.node, cni.AntiSpoofTable)
	srcs, err := g.Sources()
	if err != nil {
		t.Fatal(err)
	}
	ports, err := g.Ports()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for _, p := range ports {
		out[p] = nil
	}
	for _, s := range srcs {
		out[s.Port] = append(out[s.Port], s.Addr.String()+" "+s.MAC.String())
	}
	return out
}

// The guard of a bridge port lives as long as its pod: ADD adds it (for
// the pod's MAC and address), CHECK misses it when it is gone, a repeated
// ADD keeps one, DEL removes it, GC removes those of attachments the
// runtime no longer lists, and agent cleanup deletes the table.
func TestBridgePortGuardLifecycle(t *testing.T) {
	h := newHarness(t, model.InterfaceBridge)
	a, b := h.newPod("guard-a"), h.newPod("guard-b")
	h.mustAdd(a)
	h.mustAdd(b)
	veth := func(p *pod) string {
		for _, i := range p.res.Interfaces {
			if i.Sandbox == "" && i.Name != "kube-bridge" {
				return i.Name
			}
		}
		t.Fatalf("no host veth in %+v", p.res)
		return ""
	}
	podMAC := func(p *pod) string {
		l, err := p.ns.LinkInfo("eth0")
		if err != nil {
			t.Fatal(err)
		}
		return l.MAC.String()
	}
	va, vb := veth(a), veth(b)
	want := map[string][]string{
		va: {a.ip(t).String() + " " + podMAC(a)},
		vb: {b.ip(t).String() + " " + podMAC(b)},
	}
	if got := guarded(t, h); !equalGuards(got, want) {
		t.Fatalf("guard after two ADDs: %v, want %v", got, want)
	}
	if err := h.check(a); err != nil {
		t.Errorf("CHECK of a guarded pod: %v", err)
	}

	// Someone deletes A's element: CHECK names what is missing.
	if err := nft.NewPortGuard(h.node, cni.AntiSpoofTable).Forget(va); err != nil {
		t.Fatal(err)
	}
	if err := h.check(a); err == nil || !strings.Contains(err.Error(), "not guarded") {
		t.Errorf("CHECK with A's guard gone: %v, want it to say the port is not guarded", err)
	}
	// ADD again (what a runtime does to repair) guards it again, once.
	a.res = h.mustAdd(a)
	va = veth(a)
	want[va] = []string{a.ip(t).String() + " " + podMAC(a)}
	if got := guarded(t, h); !equalGuards(got, want) {
		t.Errorf("guard after a repeated ADD: %v, want %v", got, want)
	}

	if err := h.del(b); err != nil {
		t.Fatal(err)
	}
	delete(want, vb)
	if got := guarded(t, h); !equalGuards(got, want) {
		t.Errorf("guard after DEL of B: %v, want %v", got, want)
	}

	// A stale element (a port no veth has any more) and A, which the
	// runtime no longer lists: GC forgets both.
	stale := nft.PortSource{Port: "kdvgone", MAC: []byte{2, 0, 0, 0, 0, 9}, Addr: a.ip(t)}
	if err := nft.NewPortGuard(h.node, cni.AntiSpoofTable).Allow(stale); err != nil {
		t.Fatal(err)
	}
	fresh := newCNIConfig(t)
	if err := h.inNode(func() error {
		return fresh.GCNetworkList(ctx(t), h.list, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{{ContainerID: "keep", IfName: "eth0"}}})
	}); err != nil {
		t.Fatalf("GC: %v", err)
	}
	if got := guarded(t, h); len(got) != 0 {
		t.Errorf("guard after GC listing neither pod: %v, want none", got)
	}

	if err := cni.CleanupAntiSpoof(h.node); err != nil {
		t.Fatal(err)
	}
	out, _ := h.node.Run(context.Background(), "", "nft", "list", "tables")
	if strings.Contains(string(out), cni.AntiSpoofTable) {
		t.Errorf("the guard table is left after cleanup:\n%s", out)
	}
}

func equalGuards(got, want map[string][]string) bool {
	if len(got) != len(want) {
		return false
	}
	for p, w := range want {
		if !slices.Equal(got[p], w) {
			return false
		}
	}
	return true
}
