package podnet

import (
	"cmp"
	"errors"
	"fmt"
	"golang.org/x/sys/unix"
	"net/netip"
	"slices"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/model"
)

// Options configure a Reconciler and Render.
type Options struct {
	// NetNS is the node's network namespace: a lab node's, or on a real
	// node the root namespace (kernel.OpenNetNS("/proc/1/ns/net")).
	NetNS   *kernel.NetNS
	Network model.PodNetwork
	// Uplink is the node's underlay interface, e.g. "eth0".
	Uplink string
	// NATOutgoing masquerades traffic from the node's pods to addresses
	// outside every pod block (see natOutgoingRuleset).
	NATOutgoing bool
	// OnChange, when set, is called for every write Sync and Cleanup make,
	// synchronously; it must not call back into the Reconciler.
	OnChange func(Change)
}

// State is the snapshot Sync reconciles to.
type State struct {
	// Local is this node; it must have an IPv4 IP and PodCIDR.
	Local model.Node
	// Subnet is the underlay subnet of this node (its uplink address's
	// prefix), for cross-subnet decisions. Sync reads it from the uplink
	// when it is invalid.
	Subnet netip.Prefix
	// UplinkMTU sizes the tunnels. Sync reads it from the uplink when 0.
	UplinkMTU int
	// Gateways maps the IP of a peer that is reached unencapsulated from
	// outside Subnet to the underlay next hop toward it (the peer itself
	// when on-link). Sync asks the kernel for the ones missing.
	Gateways map[netip.Addr]netip.Addr
	// Peers are the other nodes; those without an IP or PodCIDR are
	// skipped (see Plan.Skipped), as is Local if listed.
	Peers []model.Node
}

// RoutedGateway is routed-mode pods' default gateway, answered by the
// host-side veth's proxy ARP (the CNI plugin's contract).
var RoutedGateway = netip.MustParseAddr("169.254.1.1")

// BlackholeMetric is the metric of a node's blackhole route for its own
// block: above the 0 of kube-bridge's connected route for the same prefix in
// bridge mode, so the bridge wins while it exists, and well below anything
// an admin would use to override it.
const BlackholeMetric = 1024

// minPodMTU is the smallest pod MTU Render accepts: IPv4's minimum
// datagram size every host must accept.
const minPodMTU = 576

// LinkAlias is the ifalias podnet puts on the tunnel devices it owns.
const LinkAlias = "kdive-podnet"

// Render computes the plan for a node: pure, no kernel access.
func Render(opts Options, st State) (*Plan, error) {
	if err := opts.Network.Validate("podNetwork"); err != nil {
		return nil, err
	}
	l := st.Local
	switch {
	case opts.Uplink == "":
		return nil, errors.New("render pod network: no uplink interface given")
	case !l.IP().Is4():
		return nil, fmt.Errorf("render node %s: node IP %v is not IPv4", l.Name, l.IP())
	case !l.PodCIDR.IsValid() || !l.PodCIDR.Addr().Is4():
		return nil, fmt.Errorf("render node %s: no IPv4 pod block (spec.podCIDR) yet", l.Name)
	case !st.Subnet.IsValid() || !st.Subnet.Contains(l.IP()):
		return nil, fmt.Errorf("render node %s: underlay subnet %v does not contain node IP %s", l.Name, st.Subnet, l.IP())
	case opts.Network.Encap != model.EncapNone && opts.Network.PodMTU(st.UplinkMTU) < minPodMTU:
		return nil, fmt.Errorf("render node %s: uplink %s mtu %d is unknown or too small to encapsulate", l.Name, opts.Uplink, st.UplinkMTU)
	}
	block := l.PodCIDR.Masked()
	p := &Plan{
		Node: l.Name, NodeIP: l.IP(), Block: block, Network: opts.Network,
		Uplink: opts.Uplink, UplinkMTU: st.UplinkMTU, Subnet: st.Subnet.Masked(),
	}
	r := &renderer{opts: opts, st: st, p: p, block: block, vtep: netip.PrefixFrom(vtepAddr(block), 32)}
	p.Sysctls = append(p.Sysctls, SysctlEntry{Name: "net.ipv4.ip_forward", Value: "1", Node: l.Name,
		Reason: "forward pod traffic between pods, the uplink and tunnels"})
	p.Routes = append(p.Routes, RouteEntry{
		Route: kernel.Route{Dst: block, Blackhole: true, Protocol: kernel.RouteProtocolAgent, Metric: BlackholeMetric},
		Node:  l.Name, Reason: fmt.Sprintf("own pod block of %s: drop traffic to addresses no pod holds", l.Name),
	})
	if opts.Network.Interface == model.InterfaceBridge {
		p.Sysctls = append(p.Sysctls, SysctlEntry{Name: "net.bridge.bridge-nf-call-iptables", Value: "1", Node: l.Name,
			Reason: "service replies between pods on kube-bridge must pass netfilter to be un-NATed (br_netfilter)"})
	}
	if opts.Network.Interface == model.InterfaceRouted {
		p.Routes = append(p.Routes, RouteEntry{
			Route: kernel.Route{Dst: netip.PrefixFrom(RoutedGateway, 32), Dev: "lo", Scope: unix.RT_SCOPE_LINK, Protocol: kernel.RouteProtocolAgent},
			Node:  l.Name, Reason: "routed pods' gateway: lets proxy ARP answer for it on a node without a default route",
		})
	}
	r.sharedDevice()
	if opts.NATOutgoing {
		blocks := []netip.Prefix{block}
		for _, peer := range r.peers() {
			blocks = append(blocks, peer.PodCIDR.Masked())
		}
		slices.SortFunc(blocks, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
		p.NATOutgoing = natOutgoingRuleset(block, blocks)
	}
	for _, peer := range r.peers() {
		switch {
		case !opts.Network.Encapsulate(p.Subnet, peer.IP()):
			r.direct(peer)
		case opts.Network.Encap == model.EncapVXLAN:
			r.vxlanPeer(peer)
		case opts.Network.Interface == model.InterfaceBridge:
			r.ipipTunnelPeer(peer)
		default:
			r.ipipFallbackPeer(peer)
		}
	}
	return p, nil
}

type renderer struct {
	opts  Options
	st    State
	p     *Plan
	block netip.Prefix
	// vtep is the local tunnel address: the block's network address /32.
	vtep netip.Prefix
}

// sharedDevice adds the tunnel device a mode shares among all peers.
func (r *renderer) sharedDevice() {
	switch {
	case r.opts.Network.Encap == model.EncapVXLAN:
		r.vxlanDevice()
	case r.opts.Network.Encap == model.EncapIPIP && r.opts.Network.Interface == model.InterfaceRouted:
		r.ipipFallbackDevice()
	}
}

// policy names why a peer is (or is not) encapsulated, for reasons.
func (r *renderer) policy() string { return string(r.opts.Network.EncapPolicy) }

func (r *renderer) addLink(t kernel.Tunnel, node, reason string) {
	t.Alias = LinkAlias
	t.MTU = r.opts.Network.PodMTU(r.st.UplinkMTU)
	t.Addrs = []netip.Prefix{r.vtep}
	t.Up = true
	r.p.Links = append(r.p.Links, LinkEntry{Tunnel: t, Node: node, Reason: reason})
	r.p.Sysctls = append(r.p.Sysctls, SysctlEntry{Name: devSysctl(t.Name, "rp_filter"), Value: "2", Node: node,
		Reason: "loose reverse-path filter: paths are asymmetric while a mode change rolls out"})
}

func (r *renderer) addRoute(rt kernel.Route, node, reason string) {
	rt.Protocol = kernel.RouteProtocolAgent
	r.p.Routes = append(r.p.Routes, RouteEntry{Route: rt, Node: node, Reason: reason})
}

// direct routes a peer's block over the uplink, unencapsulated.
func (r *renderer) direct(peer model.Node) {
	why := "direct, same subnet"
	if r.opts.Network.Encap == model.EncapNone {
		why = "direct, encap none"
	}
	if r.p.Subnet.Contains(peer.IP()) {
		r.addRoute(kernel.Route{Dst: peer.PodCIDR, Gateway: peer.IP(), Dev: r.opts.Uplink}, peer.Name,
			fmt.Sprintf("pod block %s of %s via %s (%s)", peer.PodCIDR, peer.Name, r.opts.Uplink, why))
		return
	}
	gw := r.st.Gateways[peer.IP()]
	if gw == peer.IP() {
		r.addRoute(kernel.Route{Dst: peer.PodCIDR, Gateway: peer.IP(), Dev: r.opts.Uplink}, peer.Name,
			fmt.Sprintf("pod block %s of %s via %s (%s, peer on-link outside subnet %s)", peer.PodCIDR, peer.Name, r.opts.Uplink, why, r.p.Subnet))
		return
	}
	r.addRoute(kernel.Route{Dst: peer.PodCIDR, Gateway: gw, Dev: r.opts.Uplink}, peer.Name,
		fmt.Sprintf("pod block %s of %s via %s and underlay gateway %s (%s: the underlay must route pod addresses)",
			peer.PodCIDR, peer.Name, r.opts.Uplink, gw, why))
}

// peers returns the usable peers, sorted by name, normalised (masked
// blocks), recording the others in Plan.Skipped.
func (r *renderer) peers() []model.Node {
	sorted := slices.Clone(r.st.Peers)
	slices.SortStableFunc(sorted, func(a, b model.Node) int {
		return cmp.Or(cmp.Compare(a.Name, b.Name), a.IP().Compare(b.IP()))
	})
	var out []model.Node
	skip := func(n model.Node, format string, args ...any) {
		r.p.Skipped = append(r.p.Skipped, Skipped{Node: n.Name, Reason: fmt.Sprintf(format, args...)})
	}
	for _, n := range sorted {
		if n.Name == r.st.Local.Name {
			continue // the agent may list every node
		}
		n.PodCIDR = n.PodCIDR.Masked()
		if why := r.unusable(n, out); why != "" {
			skip(n, "%s", why)
			continue
		}
		out = append(out, n)
	}
	return out
}

// unusable says why a peer gets no entries, or "".
func (r *renderer) unusable(n model.Node, taken []model.Node) string {
	local := r.st.Local
	switch {
	case !n.IP().IsValid():
		return "no node IP yet"
	case !n.PodCIDR.IsValid():
		return "no pod block (spec.podCIDR) yet"
	case !n.IP().Is4() || !n.PodCIDR.Addr().Is4():
		return fmt.Sprintf("IPv6 (%s, %s) is not supported", n.IP(), n.PodCIDR)
	case n.IP() == local.IP():
		return fmt.Sprintf("has this node's IP %s", n.IP())
	case n.PodCIDR.Overlaps(r.block):
		return fmt.Sprintf("pod block %s overlaps this node's %s", n.PodCIDR, r.block)
	}
	for _, t := range taken {
		if n.IP() == t.IP() {
			return fmt.Sprintf("node IP %s is also %s's", n.IP(), t.Name)
		}
		if n.PodCIDR.Overlaps(t.PodCIDR) {
			return fmt.Sprintf("pod block %s overlaps %s's %s", n.PodCIDR, t.Name, t.PodCIDR)
		}
	}
	if !r.opts.Network.Encapsulate(r.st.Subnet, n.IP()) && !r.st.Subnet.Contains(n.IP()) && !r.st.Gateways[n.IP()].IsValid() {
		return fmt.Sprintf("no underlay route to node IP %s", n.IP())
	}
	return ""
}

// devSysctl names a per-device IPv4 sysctl, in the slash form when the
// device name has a dot (as sysctl(8) does).
func devSysctl(dev, key string) string {
	for _, c := range dev {
		if c == '.' {
			return "net/ipv4/conf/" + dev + "/" + key
		}
	}
	return "net.ipv4.conf." + dev + "." + key
}
