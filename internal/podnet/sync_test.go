package podnet_test

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/ktest"
	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/podnet"
)

// syncer drives one node's Reconciler and checks after each Sync that the
// kernel reads back exactly as the plan says.
type syncer struct {
	t       *testing.T
	n       *testNode
	rec     *podnet.Reconciler
	changes []podnet.Change
}

func newSyncer(t *testing.T, n *testNode, nw model.PodNetwork) *syncer {
	s := &syncer{t: t, n: n}
	s.rec = podnet.New(podnet.Options{NetNS: n.ns, Network: nw, Uplink: "eth0",
		OnChange: func(c podnet.Change) { s.changes = append(s.changes, c) }})
	return s
}

// sync runs Sync with these peers, checks the read-back when it succeeded
// and returns the changes it made and its error.
func (s *syncer) sync(peers []model.Node) ([]podnet.Change, error) {
	s.t.Helper()
	s.changes = nil
	st := podnet.State{Local: s.n.Node, Peers: peers}
	err := s.rec.Sync(context.Background(), st)
	if err != nil {
		return s.changes, err // the read-back cannot match a plan Sync failed to apply
	}
	p, perr := s.rec.Plan(context.Background(), st)
	must(s.t, perr)
	if got, want := kernelState(s.t, s.n.ns, p.Sysctls), planState(p); got != want {
		s.t.Errorf("kernel after Sync:\n%s\nwant (plan):\n%s", got, want)
	}
	return s.changes, err
}

func routesOf(t *testing.T, ns *kernel.NetNS) string {
	t.Helper()
	rs, err := ns.Routes()
	must(t, err)
	var s []string
	for _, r := range rs {
		s = append(s, r.String())
	}
	return strings.Join(s, "\n")
}

func without(nodes []model.Node, name string) []model.Node {
	return slices.DeleteFunc(slices.Clone(nodes), func(n model.Node) bool { return n.Name == name })
}

// TestSyncVXLAN walks one node through the life of a cluster in vxlan mode
// (the encapsulation the native kernel has): first Sync, a no-op Sync,
// repairs after hand edits, foreign routes, a peer that changes and one
// that goes, a switch to encap none, and Cleanup.
func TestSyncVXLAN(t *testing.T) {
	c := newCluster(t)
	n1 := c.nodes[0]
	ns := n1.ns
	s := newSyncer(t, n1, network(routed, "vxlan", always))
	peers := c.peers()

	if ch, err := s.sync(peers); err != nil || len(ch) == 0 {
		t.Fatalf("first Sync: %d changes, %v", len(ch), err)
	}
	if ch, err := s.sync(peers); err != nil || len(ch) != 0 {
		t.Errorf("second Sync changed %v (err %v); want nothing", ch, err)
	}

	// Hand edits come back, and only they are redone.
	mac3 := podnet.VTEPMAC(node3.IP())
	must(t, ns.DeleteRoute(kernel.Route{Dst: node3.PodCIDR, Gateway: netip.MustParseAddr("10.244.3.0"), Dev: podnet.VXLANDevice, OnLink: true}))
	must(t, ns.DeleteFDB(kernel.FDBEntry{Dev: podnet.VXLANDevice, MAC: mac3, Dst: node3.IP()}))
	must(t, ns.DeleteNeighbor(kernel.Neighbor{Dev: podnet.VXLANDevice, IP: netip.MustParseAddr("10.244.3.0"), MAC: mac3}))
	must(t, ns.SetMTU(podnet.VXLANDevice, 1400))
	if ch, err := s.sync(peers); err != nil || len(ch) != 4 {
		t.Errorf("Sync after 4 hand edits made %d changes: %v (err %v)", len(ch), ch, err)
	}

	// Routes of other owners are left alone, and one in the way of a
	// peer's route is reported, not replaced.
	foreign := []kernel.Route{
		{Dst: netip.MustParsePrefix("10.244.3.128/25"), Gateway: node2.IP(), Dev: "eth0", Protocol: unix.RTPROT_STATIC},
		{Dst: netip.MustParsePrefix("10.244.0.0/16"), Blackhole: true, Protocol: unix.RTPROT_STATIC},
		{Dst: netip.MustParsePrefix("10.244.9.0/24"), Gateway: node2.IP(), Dev: "eth0", Protocol: unix.RTPROT_STATIC},
	}
	for _, r := range foreign {
		must(t, ns.ReplaceRoute(r))
	}
	node9 := node("node-9", "192.0.2.19", "10.244.9.0/24")
	_, err := s.sync(append(slices.Clone(peers), node9))
	if !errors.Is(err, podnet.ErrForeignRoute) || !strings.Contains(err.Error(), "sync node-9 peer route 10.244.9.0/24: ") {
		t.Errorf("Sync with node-9's block taken by a static route: err = %v, want ErrForeignRoute naming it", err)
	}
	checkForeign := func(step string) {
		t.Helper()
		all := routesOf(t, ns)
		for _, r := range foreign {
			if !strings.Contains(all, r.String()) {
				t.Errorf("%s: foreign route %s is gone:\n%s", step, r, all)
			}
		}
	}
	checkForeign("after Sync")
	if ch, _ := s.sync(append(slices.Clone(peers), node9)); len(ch) != 0 {
		t.Errorf("repeated Sync with a conflict changed %v", ch)
	}

	// node-2 moves to a new IP: its FDB entry and neighbour follow.
	moved := slices.Clone(peers)
	moved[1].IPs = []netip.Addr{netip.MustParseAddr("192.0.2.22")}
	if _, err := s.sync(moved); err != nil {
		t.Fatal(err)
	}
	fdb, err := ns.FDB(podnet.VXLANDevice)
	must(t, err)
	for _, e := range fdb {
		if e.Dst == node2.IP() || e.MAC.String() == podnet.VTEPMAC(node2.IP()).String() {
			t.Errorf("fdb entry of node-2's old IP left: %s", e)
		}
	}

	// node-3 goes: nothing of it stays.
	if _, err := s.sync(without(moved, "node-3")); err != nil {
		t.Fatal(err)
	}
	state := kernelState(t, ns, nil)
	if strings.Contains(state, "10.244.3.0") || strings.Contains(state, node3.IP().String()) {
		t.Errorf("node-3 deleted, but entries remain:\n%s", state)
	}
	checkForeign("after peer deletion")

	// Switching to encap none (a new agent configuration) removes the VXLAN
	// device with its entries.
	s = newSyncer(t, n1, network(routed, "none", cross))
	if _, err := s.sync(c.peers()); err != nil {
		t.Fatal(err)
	}
	if _, err := ns.LinkByName(podnet.VXLANDevice); !errors.Is(err, kernel.ErrNotFound) {
		t.Errorf("%s still there after switching to encap none: %v", podnet.VXLANDevice, err)
	}

	// Cleanup, by a reconciler that never synced, removes everything.
	s = newSyncer(t, n1, network(routed, "vxlan", always))
	must(t, s.rec.Sync(context.Background(), podnet.State{Local: n1.Node, Peers: c.peers()}))
	must(t, podnet.New(podnet.Options{NetNS: ns, Uplink: "eth0"}).Cleanup(context.Background()))
	if state := kernelState(t, ns, nil); state != "" {
		t.Errorf("left after Cleanup:\n%s", state)
	}
	checkForeign("after Cleanup")
}

// TestSyncIPIP does the same for both IPIP styles and the switch between
// them: tunl0 is configured, then released (it cannot be deleted) when the
// per-peer tunnels of bridge mode replace it.
func TestSyncIPIP(t *testing.T) {
	ktest.RequireFeature(t, kernel.FeatureIPIP)
	c := newCluster(t)
	n1 := c.nodes[0]
	s := newSyncer(t, n1, network(routed, "ipip", cross))
	if _, err := s.sync(c.peers()); err != nil {
		t.Fatal(err)
	}
	if ch, err := s.sync(c.peers()); err != nil || len(ch) != 0 {
		t.Errorf("second Sync changed %v (err %v)", ch, err)
	}
	must(t, n1.ns.DeleteRoute(kernel.Route{Dst: node3.PodCIDR, Gateway: node3.IP(), Dev: kernel.IPIPFallback, OnLink: true}))
	if ch, err := s.sync(c.peers()); err != nil || len(ch) != 1 {
		t.Errorf("Sync after a route was deleted by hand: %v (err %v), want 1 change", ch, err)
	}

	s = newSyncer(t, n1, network(bridge, "ipip", always))
	if _, err := s.sync(c.peers()); err != nil {
		t.Fatal(err)
	}
	tunl0, err := n1.ns.LinkByName(kernel.IPIPFallback)
	must(t, err)
	if tunl0.Up || len(tunl0.Addrs) != 0 || tunl0.Alias != "" {
		t.Errorf("tunl0 not released after switching to per-peer tunnels: %+v", tunl0)
	}
	if _, err := s.sync(without(c.peers(), "node-3")); err != nil {
		t.Fatal(err)
	}
	if _, err := n1.ns.LinkByName(podnet.TunnelName(node3.IP())); !errors.Is(err, kernel.ErrNotFound) {
		t.Errorf("node-3's tunnel left after it was deleted: %v", err)
	}
	must(t, s.rec.Cleanup(context.Background()))
	if state := kernelState(t, n1.ns, nil); state != "" {
		t.Errorf("left after Cleanup:\n%s", state)
	}
}
