package kernel_test

import (
	"errors"
	"net/netip"
	"sync"
	"testing"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/ktest"
)

func TestPodLinkHelpers(t *testing.T) {
	ktest.RequireFeature(t, kernel.FeatureVeth)
	ktest.RequireFeature(t, kernel.FeatureBridge)
	node, pod := ktest.NewNetNS(t), ktest.NewNetNS(t)

	again, err := kernel.OpenNetNS(node.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if same, err := node.SameNetNS(again); err != nil || !same {
		t.Errorf("SameNetNS(node, node reopened) = %t, %v", same, err)
	}
	if same, err := node.SameNetNS(pod); err != nil || same {
		t.Errorf("SameNetNS(node, pod) = %t, %v", same, err)
	}

	if _, err := node.LinkInfo("nope"); !errors.Is(err, kernel.ErrNotFound) {
		t.Errorf("LinkInfo of a missing link: %v", err)
	}
	// Racing creators of one bridge all succeed.
	gw := netip.MustParsePrefix("10.0.1.1/24")
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			if err := node.EnsureBridge("br0", kernel.LinkAttrs{MTU: 1450}, gw); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	br, err := node.LinkInfo("br0")
	if err != nil || br.Type != "bridge" || br.MTU != 1450 || !br.Up || len(br.Addrs) == 0 || br.Addrs[0] != gw {
		t.Errorf("br0 = %+v, %v", br, err)
	}

	if err := node.AddVeth("veth0", kernel.LinkAttrs{MTU: 1450}, pod, "eth0", kernel.LinkAttrs{MTU: 1450}); err != nil {
		t.Fatal(err)
	}
	if err := node.SetMaster("veth0", "br0"); err != nil {
		t.Fatal(err)
	}
	if err := node.SetHairpin("veth0", true); err != nil {
		t.Fatal(err)
	}
	if on, err := node.Hairpin("veth0"); err != nil || !on {
		t.Errorf("Hairpin(veth0) = %t, %v", on, err)
	}

	if _, err := node.RouteTo(netip.MustParseAddr("169.254.1.1")); !errors.Is(err, kernel.ErrNotFound) {
		t.Errorf("RouteTo without a route: %v", err)
	}
	if r, err := node.RouteTo(netip.MustParseAddr("10.0.1.7")); err != nil || r.Dev != "br0" {
		t.Errorf("RouteTo(10.0.1.7) = %v, %v; want dev br0", r, err)
	}

	if _, err := node.DeleteVeth("br0"); !errors.Is(err, kernel.ErrNotVeth) {
		t.Errorf("DeleteVeth(bridge): %v", err)
	}
	if deleted, err := node.DeleteVeth("veth0"); err != nil || !deleted {
		t.Errorf("DeleteVeth(veth0) = %t, %v", deleted, err)
	}
	if _, err := pod.LinkInfo("eth0"); !errors.Is(err, kernel.ErrNotFound) {
		t.Errorf("the pod end survived its peer: %v", err)
	}
	if deleted, err := node.DeleteVeth("veth0"); err != nil || deleted {
		t.Errorf("DeleteVeth of a missing veth = %t, %v", deleted, err)
	}
}
