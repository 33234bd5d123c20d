package diag

import (
	"fmt"
	"net/netip"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/podnet"
)

// Route kinds (RouteRow.Kind).
const (
	RouteOwnBlock   = "own-block"    // blackhole for this node's pod block
	RoutePeerBlock  = "peer-block"   // another node's pod block
	RoutePod        = "pod"          // a pod's /32 (routed mode)
	RoutePodBridge  = "pod-bridge"   // this node's block on kube-bridge (bridge mode)
	RoutePodGateway = "pod-gateway"  // 169.254.1.1 dev lo (routed mode)
	RouteNodeSubnet = "node-subnet"  // the uplink's connected subnet
	RouteUnderlay   = "underlay"     // a lab subnet or the external network via the router
	RouteService    = "service-cidr" // the service range via the gateway (lab)
	RouteLBPool     = "lb-pool"      // the LoadBalancer pool via the gateway (lab)
	RouteForeign    = "foreign"      // not kdive's
)

// Route owners (RouteRow.Owner).
const (
	OwnerAgent   = "kdive-agent" // protocol kernel.RouteProtocolAgent
	OwnerCNI     = "kdive-cni"   // protocol kernel.RouteProtocolCNI
	OwnerKernel  = "kernel"      // made by the kernel for an address
	OwnerLab     = "lab"         // the lab's underlay
	OwnerForeign = "foreign"
)

// RouteRow is one route of the node's main table and what it means.
type RouteRow struct {
	// Route is the route as `ip route` prints it (without its protocol).
	Route     string `json:"route"`
	Dst       string `json:"dst"` // a prefix, or "default"
	Gateway   string `json:"gateway,omitempty"`
	Dev       string `json:"dev,omitempty"`
	Blackhole bool   `json:"blackhole,omitempty"`
	Protocol  string `json:"protocol"` // kdive-agent, kdive-cni, kernel, boot, static, dhcp, or the number
	Metric    int    `json:"metric,omitempty"`
	Kind      string `json:"kind"`
	Owner     string `json:"owner"`
	// Node owns the destination (a pod block's node); Pod holds it
	// (namespace/name).
	Node string `json:"node,omitempty"`
	Pod  string `json:"pod,omitempty"`
	// Encap is how a peer block is reached: none, ipip or vxlan;
	// CrossSubnet whether that peer is in another underlay subnet (absent
	// when unknown).
	Encap       string `json:"encap,omitempty"`
	CrossSubnet *bool  `json:"crossSubnet,omitempty"`
	Meaning     string `json:"meaning"`
}

// AnnotateRoutes gives every route of ks its meaning in topo, in the
// kernel's order.
func AnnotateRoutes(topo *Topology, ks *KernelState) []RouteRow {
	v := newView(topo, ks)
	rows := make([]RouteRow, 0, len(ks.Routes))
	for _, r := range ks.Routes {
		row := RouteRow{
			Route: routeText(r), Dst: "default", Dev: r.Dev, Blackhole: r.Blackhole,
			Protocol: protoName(r.Protocol), Metric: r.Metric,
		}
		if r.Dst.IsValid() {
			row.Dst = r.Dst.String()
		}
		if r.Gateway.IsValid() {
			row.Gateway = r.Gateway.String()
		}
		switch r.Protocol {
		case kernel.RouteProtocolAgent:
			row.Owner = OwnerAgent
			v.agentRoute(r, &row)
		case kernel.RouteProtocolCNI:
			row.Owner = OwnerCNI
			v.cniRoute(r, &row)
		default:
			v.otherRoute(r, &row)
		}
		rows = append(rows, row)
	}
	return rows
}

// agentRoute: the node's blackhole, peers' blocks, routed pods' gateway.
func (v *view) agentRoute(r kernel.Route, row *RouteRow) {
	own := v.local.PodCIDR.IsValid() && r.Dst == v.local.PodCIDR.Masked()
	switch {
	case r.Blackhole && own:
		row.Kind, row.Node = RouteOwnBlock, v.local.Name
		row.Meaning = fmt.Sprintf("blackhole: this node's own block %s (addresses no pod holds are dropped here)", r.Dst)
		if v.topo.Network.Interface == model.InterfaceBridge {
			row.Meaning = fmt.Sprintf("blackhole: this node's own block %s (kube-bridge's route wins while the bridge exists)", r.Dst)
		}
		return
	case r.Blackhole:
		row.Kind = RouteOwnBlock
		row.Meaning = fmt.Sprintf("blackhole for %s, which is not this node's block (stale: the agent removes it at its next sync)", r.Dst)
		if n, ok := v.topo.nodeByBlock(r.Dst); ok {
			row.Node = n.Name
			row.Meaning = fmt.Sprintf("blackhole for %s, the block of %s, not this node's (stale: the agent removes it at its next sync)", r.Dst, n.Name)
		}
		return
	case r.Dst == netip.PrefixFrom(podnet.RoutedGateway, 32):
		row.Kind = RoutePodGateway
		row.Meaning = fmt.Sprintf("routed pods' gateway %s: lets each pod veth answer ARP for it (proxy ARP)", podnet.RoutedGateway)
		return
	}
	row.Kind = RoutePeerBlock
	encap, words := v.encapOf(r.Dev)
	row.Encap = encap
	peer, known := v.topo.nodeByBlock(r.Dst)
	owner := "an unknown node"
	if known {
		row.Node, owner = peer.Name, peer.Name
	} else if len(v.topo.Nodes) > 1 {
		owner = "no known node (stale: the agent removes it at its next sync)"
	}
	// The peer's underlay address: the node's, else what the route says
	// (tunl0's and tun-*'s gateway, a direct route's next hop).
	peerIP := peer.IP
	if !peerIP.IsValid() && encap == "ipip" {
		peerIP = r.Gateway
	}
	if t, ok := v.ks.tunnel(r.Dev); ok && t.Remote.IsValid() && !peerIP.IsValid() {
		peerIP = t.Remote
	}
	where := ""
	if same, ok := v.sameSubnet(peerIP); ok {
		cross := !same
		row.CrossSubnet = &cross
		where = ", same subnet"
		if cross {
			where = ", cross-subnet"
		}
	}
	switch encap {
	case "none":
		hop := r.Gateway.String()
		if !r.Gateway.IsValid() {
			hop = r.Dev
		}
		how := "direct" + where
		if peerIP.IsValid() && r.Gateway.IsValid() && r.Gateway != peerIP {
			how = "direct through underlay gateway " + r.Gateway.String() + where + ": the underlay must route pod addresses"
		}
		row.Meaning = fmt.Sprintf("pod block %s of %s via %s (%s)", r.Dst, owner, hop, how)
	case "vxlan":
		to := ""
		if dst, ok := v.vtepDst(r.Dev, peer); ok {
			to = " to " + dst.String()
		} else if known && peer.IP.IsValid() {
			to = fmt.Sprintf(", but no FDB entry for %s's VTEP", peer.Name)
		}
		row.Meaning = fmt.Sprintf("pod block %s of %s via %s (%s%s%s)", r.Dst, owner, r.Dev, words, to, where)
	default:
		to := ""
		if peerIP.IsValid() {
			to = " to " + peerIP.String()
		}
		row.Meaning = fmt.Sprintf("pod block %s of %s via %s (%s%s%s)", r.Dst, owner, r.Dev, words, to, where)
	}
}

// vtepDst is where a VXLAN device sends a peer's frames: the FDB entry for
// the peer's VTEP MAC.
func (v *view) vtepDst(dev string, peer Node) (netip.Addr, bool) {
	if !peer.IP.IsValid() {
		return netip.Addr{}, false
	}
	mac := podnet.VTEPMAC(peer.IP).String()
	for _, e := range v.ks.FDB[dev] {
		if e.MAC.String() == mac {
			return e.Dst, true
		}
	}
	return netip.Addr{}, false
}

// cniRoute: a pod's /32 in routed mode.
func (v *view) cniRoute(r kernel.Route, row *RouteRow) {
	row.Kind = RoutePod
	ip := r.Dst.Addr()
	if p, ok := v.topo.podByIP(ip, v.local.Name); ok && p.Name != "" {
		row.Pod = p.FullName()
		row.Node = p.Node
		row.Meaning = fmt.Sprintf("pod %s via %s", row.Pod, r.Dev)
		return
	}
	if l, ok := v.ks.link(r.Dev); ok {
		if a, ok := vethAttachment(l.Alias); ok {
			if p, ok := v.podOfAttachment(a); ok && p.Name != "" {
				row.Pod, row.Node = p.FullName(), p.Node
				row.Meaning = fmt.Sprintf("pod %s via %s", row.Pod, r.Dev)
				return
			}
			row.Meaning = fmt.Sprintf("pod %s (container %s, pod name unknown) via %s", ip, shortID(a.ContainerID), r.Dev)
			return
		}
	}
	row.Meaning = fmt.Sprintf("pod address %s via %s (no known pod holds it)", ip, r.Dev)
}

// otherRoute: the kernel's connected routes, the lab's underlay, and
// everything else, which is foreign.
func (v *view) otherRoute(r kernel.Route, row *RouteRow) {
	labMade := v.topo.Lab != "" && (r.Protocol == 0 || r.Protocol == 3 || r.Protocol == 4)
	row.Owner = OwnerForeign
	if labMade {
		row.Owner = OwnerLab
	}
	via := func() string {
		if r.Gateway.IsValid() {
			return " via gateway " + r.Gateway.String()
		}
		if r.Dev != "" {
			return " on " + r.Dev
		}
		return ""
	}
	if r.Protocol == 2 { // proto kernel: a connected route
		row.Owner = OwnerKernel
		switch {
		case r.Dev == v.bridge && v.local.PodCIDR.IsValid() && r.Dst == v.local.PodCIDR.Masked():
			row.Kind, row.Node = RoutePodBridge, v.local.Name
			row.Meaning = fmt.Sprintf("this node's pod block %s on %s (bridge mode: pods are reached over the bridge)", r.Dst, r.Dev)
			return
		case r.Dev == v.uplink && (r.Dst == v.subnet || !v.subnet.IsValid()):
			row.Kind = RouteNodeSubnet
			row.Meaning = fmt.Sprintf("node subnet%s, connected on %s (made by the kernel for the node's address)", v.subnetName(r.Dst), r.Dev)
			return
		}
		row.Kind, row.Owner = RouteForeign, OwnerForeign
		row.Meaning = fmt.Sprintf("foreign: connected network of %s (made by the kernel for its address)", r.Dev)
		return
	}
	if r.Dst.IsValid() && !r.Blackhole {
		switch {
		case r.Dst == v.topo.ServiceCIDR:
			row.Kind = RouteService
			row.Meaning = fmt.Sprintf("service CIDR %s%s (stands in for a default route: the proxy rewrites service IPs before it is used)", r.Dst, via())
			if !labMade {
				row.Meaning = "foreign: " + row.Meaning
			}
			return
		case r.Dst == v.topo.LoadBalancerCIDR:
			row.Kind = RouteLBPool
			row.Meaning = fmt.Sprintf("LoadBalancer pool %s%s (stands in for a default route)", r.Dst, via())
			if !labMade {
				row.Meaning = "foreign: " + row.Meaning
			}
			return
		case labMade && r.Dst == v.topo.ExternalCIDR:
			row.Kind = RouteUnderlay
			row.Meaning = fmt.Sprintf("external client's network %s%s (lab underlay: the router)", r.Dst, via())
			return
		}
		if sn, ok := v.topo.subnetOf(r.Dst); ok && labMade {
			row.Kind = RouteUnderlay
			row.Meaning = fmt.Sprintf("node subnet %s %s%s (lab underlay: the router)", sn.Name, r.Dst, via())
			return
		}
	}
	row.Kind, row.Owner = RouteForeign, OwnerForeign
	what := "route to " + row.Dst
	if !r.Dst.IsValid() {
		what = "default route"
	}
	if r.Blackhole {
		what = "blackhole for " + row.Dst
	}
	row.Meaning = fmt.Sprintf("foreign: %s%s, not kdive's (proto %s)", what, via(), row.Protocol)
}

// subnetName is " zone-a 172.20.1.0/24" for a lab subnet, else " 172.20.1.0/24".
func (v *view) subnetName(p netip.Prefix) string {
	if sn, ok := v.topo.subnetOf(p); ok {
		return fmt.Sprintf(" %s %s", sn.Name, p)
	}
	return " " + p.String()
}

// routeText prints a route as `ip route` does, without its protocol.
func routeText(r kernel.Route) string {
	var b strings.Builder
	if r.Blackhole {
		b.WriteString("blackhole ")
	}
	switch {
	case !r.Dst.IsValid():
		b.WriteString("default")
	case r.Dst.IsSingleIP():
		b.WriteString(r.Dst.Addr().String())
	default:
		b.WriteString(r.Dst.String())
	}
	if r.Gateway.IsValid() {
		b.WriteString(" via " + r.Gateway.String())
	}
	if r.Dev != "" && !r.Blackhole {
		b.WriteString(" dev " + r.Dev)
	}
	if r.OnLink {
		b.WriteString(" onlink")
	}
	switch r.Scope {
	case unix.RT_SCOPE_LINK:
		b.WriteString(" scope link")
	case unix.RT_SCOPE_HOST:
		b.WriteString(" scope host")
	}
	if r.Src.IsValid() {
		b.WriteString(" src " + r.Src.String())
	}
	if r.Metric != 0 {
		fmt.Fprintf(&b, " metric %d", r.Metric)
	}
	return b.String()
}
