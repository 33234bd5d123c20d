package cni_test

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"golang.org/x/sys/unix"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/model"
)

// checkResult checks the parts of an ADD result common to both modes.
func checkResult(t *testing.T, p *pod, res *types100.Result, wantIfaces int, gw string, bits int) {
	t.Helper()
	if len(res.Interfaces) != wantIfaces {
		t.Fatalf("result has %d interfaces, want %d: %+v", len(res.Interfaces), wantIfaces, res.Interfaces)
	}
	podIf := res.Interfaces[wantIfaces-1]
	if podIf.Name != "eth0" || podIf.Sandbox != p.ns.Path() || podIf.Mac == "" {
		t.Errorf("pod interface in result: %+v", podIf)
	}
	for _, i := range res.Interfaces[:wantIfaces-1] {
		if i.Sandbox != "" || i.Mac == "" {
			t.Errorf("host interface in result: %+v", i)
		}
	}
	ipc := res.IPs[0]
	if ipc.Interface == nil || *ipc.Interface != wantIfaces-1 || ipc.Gateway.String() != gw {
		t.Errorf("ip in result: %+v, want interface %d gateway %s", ipc, wantIfaces-1, gw)
	}
	if ones, _ := ipc.Address.Mask.Size(); ones != bits || !block.Contains(p.ip(t)) {
		t.Errorf("pod address %s, want /%d in %s", ipc.Address.String(), bits, block)
	}
	if len(res.Routes) != 1 || res.Routes[0].Dst.String() != "0.0.0.0/0" || res.Routes[0].GW.String() != gw {
		t.Errorf("routes in result: %+v", res.Routes)
	}
	l, err := p.ns.LinkInfo("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if l.MTU != 1450 || l.MAC.String() != podIf.Mac {
		t.Errorf("pod eth0: MTU %d MAC %s; want 1450 and %s", l.MTU, l.MAC, podIf.Mac)
	}
}

func TestRoutedThroughLibcni(t *testing.T) {
	h := newHarness(t, model.InterfaceRouted)
	a, b := h.newPod("pod-a"), h.newPod("pod-b")
	res := h.mustAdd(a)
	h.mustAdd(b)
	checkResult(t, a, res, 2, "169.254.1.1", 32)
	if a.ip(t) == b.ip(t) {
		t.Fatalf("both pods got %s", a.ip(t))
	}

	hv := res.Interfaces[0].Name
	if !strings.HasPrefix(hv, "cali") || len(hv) != 15 {
		t.Errorf("host veth %q, want cali + 11 hex digits", hv)
	}
	hl, err := h.node.LinkInfo(hv)
	if err != nil || hl.MTU != 1450 || !hl.Up || slices.ContainsFunc(hl.Addrs, func(p netip.Prefix) bool { return p.Addr().Is4() }) ||
		hl.MAC.String() != res.Interfaces[0].Mac {
		t.Errorf("host veth %s: %+v, %v; want up, MTU 1450, no IPv4 address, MAC %s", hv, hl, err, res.Interfaces[0].Mac)
	}
	for _, s := range []string{"net.ipv4.conf." + hv + ".proxy_arp", "net.ipv4.conf." + hv + ".forwarding"} {
		if v, err := h.node.ReadSysctl(s); err != nil || v != "1" {
			t.Errorf("%s = %q, %v; want 1", s, v, err)
		}
	}
	if v, _ := h.node.ReadSysctl("net.ipv4.neigh." + hv + ".proxy_delay"); v != "0" {
		t.Errorf("proxy_delay of %s = %q, want 0", hv, v)
	}
	wantHostRoute := kernel.Route{Dst: netip.PrefixFrom(a.ip(t), 32), Dev: hv, Scope: unix.RT_SCOPE_LINK, Protocol: kernel.RouteProtocolCNI}
	if routes, _ := h.node.Routes(); !slices.ContainsFunc(routes, wantHostRoute.Equal) {
		t.Errorf("node lacks route %s; has %v", wantHostRoute, routes)
	}
	podRoutes, _ := a.ns.Routes()
	for _, w := range []string{"169.254.1.1/32 dev eth0 scope link", "default via 169.254.1.1 dev eth0"} {
		if !slices.ContainsFunc(podRoutes, func(r kernel.Route) bool { r.Protocol = 0; return r.String() == w }) {
			t.Errorf("pod lacks route %q; has %v", w, podRoutes)
		}
	}

	connect(t, a.ns, h.node, nodeAddr, a.ip(t))
	connect(t, a.ns, b.ns, b.ip(t), a.ip(t))
	connect(t, b.ns, a.ns, a.ip(t), b.ip(t))

	if err := h.check(a); err != nil {
		t.Errorf("CHECK of a healthy pod: %v", err)
	}
	if err := h.status(); err != nil {
		t.Errorf("STATUS: %v", err)
	}
	// CHECK says what is missing.
	if err := h.node.DeleteRoute(wantHostRoute); err != nil {
		t.Fatal(err)
	}
	err = h.check(a)
	if err == nil || !strings.Contains(err.Error(), "no route "+wantHostRoute.String()) {
		t.Errorf("CHECK without the host route: %v", err)
	}

	// ADD again for the same attachment rebuilds it with the same address.
	again := h.mustAdd(a)
	if again.IPs[0].Address.String() != res.IPs[0].Address.String() {
		t.Errorf("second ADD gave %s, first %s", again.IPs[0].Address.String(), res.IPs[0].Address.String())
	}
	if err := h.check(a); err != nil {
		t.Errorf("CHECK after the second ADD: %v", err)
	}

	for _, p := range []*pod{a, b} {
		for i := range 2 {
			if err := h.del(p); err != nil {
				t.Errorf("DEL %s #%d: %v", p.rt.ContainerID, i+1, err)
			}
		}
	}
	if v := h.ourVeths(); len(v) != 0 {
		t.Errorf("veths left after DEL: %v", v)
	}
	if l, _ := h.store().List(); len(l) != 0 {
		t.Errorf("addresses left after DEL: %v", l)
	}
	if routes, _ := h.node.Routes(); slices.ContainsFunc(routes, func(r kernel.Route) bool { return r.Protocol == kernel.RouteProtocolCNI }) {
		t.Errorf("CNI routes left after DEL: %v", routes)
	}
}

func TestBridgeThroughLibcni(t *testing.T) {
	h := newHarness(t, model.InterfaceBridge)
	a, b := h.newPod("pod-a"), h.newPod("pod-b")
	res := h.mustAdd(a)
	h.mustAdd(b)
	checkResult(t, a, res, 3, "10.0.1.1", 24)
	if res.Interfaces[0].Name != "kube-bridge" {
		t.Errorf("first interface %q, want kube-bridge", res.Interfaces[0].Name)
	}
	br, err := h.node.LinkInfo("kube-bridge")
	if err != nil || br.Type != "bridge" || br.MTU != 1450 || !br.Up || !slices.Contains(br.Addrs, netip.MustParsePrefix("10.0.1.1/24")) {
		t.Errorf("kube-bridge: %+v, %v", br, err)
	}
	hv := res.Interfaces[1].Name
	hl, err := h.node.LinkInfo(hv)
	if err != nil || !strings.HasPrefix(hv, "veth") || len(hv) != 12 || hl.Master != br.Index || hl.MTU != 1450 {
		t.Errorf("host veth %s: %+v, %v", hv, hl, err)
	}
	if on, err := h.node.Hairpin(hv); err != nil || !on {
		t.Errorf("hairpin on %s = %t, %v", hv, on, err)
	}

	connect(t, a.ns, h.node, nodeAddr, a.ip(t))
	connect(t, a.ns, h.node, netip.MustParseAddr("10.0.1.1"), a.ip(t))
	connect(t, a.ns, b.ns, b.ip(t), a.ip(t))

	if err := h.check(a); err != nil {
		t.Errorf("CHECK of a healthy pod: %v", err)
	}
	if err := h.status(); err != nil {
		t.Errorf("STATUS: %v", err)
	}
	if err := h.node.SetHairpin(hv, false); err != nil {
		t.Fatal(err)
	}
	if err := h.check(a); err == nil || !strings.Contains(err.Error(), "hairpin mode is off on "+hv) {
		t.Errorf("CHECK without hairpin: %v", err)
	}
	for _, p := range []*pod{a, b} {
		for i := range 2 {
			if err := h.del(p); err != nil {
				t.Errorf("DEL %s #%d: %v", p.rt.ContainerID, i+1, err)
			}
		}
	}
	if v := h.ourVeths(); len(v) != 0 {
		t.Errorf("veths left after DEL: %v", v)
	}
	if l, _ := h.store().List(); len(l) != 0 {
		t.Errorf("addresses left after DEL: %v", l)
	}
	if _, err := h.node.LinkInfo("kube-bridge"); err != nil {
		t.Errorf("the bridge is shared and must stay: %v", err)
	}
}

// TestGCThroughLibcni leaks attachments the way a crashed runtime does (its
// cache is lost, so libcni cannot DEL them itself) and lets the plugin's GC
// clean up everything not listed.
func TestGCThroughLibcni(t *testing.T) {
	h := newHarness(t, model.InterfaceRouted)
	pods := []*pod{h.newPod("keep"), h.newPod("gone-1"), h.newPod("gone-2")}
	for _, p := range pods {
		h.mustAdd(p)
	}
	keepVeth := pods[0].res.Interfaces[0].Name
	// A runtime with an empty cache: libcni itself deletes nothing.
	fresh := newCNIConfig(t)
	err := h.inNode(func() error {
		return fresh.GCNetworkList(ctx(t), h.list, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{{ContainerID: "keep", IfName: "eth0"}}})
	})
	if err != nil {
		t.Fatalf("GC: %v", err)
	}
	if v := h.ourVeths(); len(v) != 1 || v[0] != keepVeth {
		t.Errorf("veths after GC: %v, want [%s]", v, keepVeth)
	}
	list, _ := h.store().List()
	if len(list) != 1 || list[0].Attachment.ContainerID != "keep" || list[0].Addr != pods[0].ip(t) {
		t.Errorf("IPAM after GC: %v", list)
	}
	if _, err := pods[1].ns.LinkInfo("eth0"); err == nil {
		t.Error("a collected pod still has eth0")
	}
	if err := h.check(pods[0]); err != nil {
		t.Errorf("CHECK of the kept pod: %v", err)
	}
	connect(t, pods[0].ns, h.node, nodeAddr, pods[0].ip(t))
}

// TestConcurrentAdds runs 50 plugin processes at once, as a busy node's
// runtime does, each attaching its own pod (in bridge mode they also race
// to create the bridge).
func TestConcurrentAdds(t *testing.T) {
	for _, mode := range []model.Interface{model.InterfaceRouted, model.InterfaceBridge} {
		t.Run(string(mode), func(t *testing.T) { concurrentAdds(t, mode) })
	}
}

func concurrentAdds(t *testing.T, mode model.Interface) {
	h := newHarness(t, mode)
	const n = 50
	pods := make([]*pod, n)
	for i := range pods {
		pods[i] = h.newPod(fmt.Sprintf("pod-%02d", i))
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i, p := range pods {
		wg.Go(func() { _, errs[i] = h.add(p) })
	}
	wg.Wait()
	seen := map[netip.Addr]string{}
	for i, p := range pods {
		if errs[i] != nil {
			t.Fatalf("ADD %s: %v", p.rt.ContainerID, errs[i])
		}
		ip := p.ip(t)
		if other, dup := seen[ip]; dup {
			t.Errorf("%s handed to %s and %s", ip, other, p.rt.ContainerID)
		}
		seen[ip] = p.rt.ContainerID
	}
	if v := h.ourVeths(); len(v) != n {
		t.Errorf("%d host veths for %d pods", len(v), n)
	}
	for i, p := range pods {
		wg.Go(func() { errs[i] = h.del(p) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("DEL %s: %v", pods[i].rt.ContainerID, err)
		}
	}
	if l, _ := h.store().List(); len(l) != 0 {
		t.Errorf("%d addresses left after DEL: %v", len(l), l)
	}
	if v := h.ourVeths(); len(v) != 0 {
		t.Errorf("veths left after DEL: %v", v)
	}
}

func TestTypoThroughLibcni(t *testing.T) {
	h := newHarness(t, model.InterfaceRouted)
	h.loadConfList([]byte(`{"cniVersion":"1.1.0","name":"kdive","plugins":[{"type":"kdive","mode":"routed","podCDIR":"10.0.1.0/24","mtu":1450}]}`))
	p := h.newPod("pod-a")
	_, err := h.add(p)
	te := cniErr(t, err)
	if te.Code != types.ErrInvalidNetworkConfig || !strings.Contains(te.Msg, `unknown key "podCDIR" (did you mean "podCIDR"?)`) ||
		!strings.Contains(te.Msg, "ADD pod-a/eth0") {
		t.Errorf("ADD with a typo: code %d %q", te.Code, te.Msg)
	}
	if v := h.ourVeths(); len(v) != 0 {
		t.Errorf("a failed ADD left veths: %v", v)
	}
}

// TestRoutedNeedsGatewayRoute: without a node route covering 169.254.1.1
// (no default route) proxy ARP cannot answer, so ADD and STATUS say so
// instead of attaching a pod that cannot reach anything.
func TestRoutedNeedsGatewayRoute(t *testing.T) {
	h := newHarness(t, model.InterfaceRouted)
	if err := h.node.DeleteRoute(kernel.Route{Gateway: netip.MustParseAddr("192.0.2.254"), Dev: "up0"}); err != nil {
		t.Fatal(err)
	}
	_, err := h.add(h.newPod("pod-a"))
	if te := cniErr(t, err); te.Code != types.ErrPluginNotAvailable || !strings.Contains(te.Msg, "covering 169.254.1.1") {
		t.Errorf("ADD without a node default route: code %d %q", te.Code, te.Msg)
	}
	if te := cniErr(t, h.status()); te.Code != types.ErrPluginNotAvailable {
		t.Errorf("STATUS without a node default route: code %d %q", te.Code, te.Msg)
	}
	if l, _ := h.store().List(); len(l) != 0 {
		t.Errorf("a failed ADD left addresses: %v", l)
	}
}
