package diag

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/podnet"
	"github.com/kdive/kdive/internal/proxy/ipvs"
)

// Link roles (LinkRow.Role).
const (
	LinkUplink   = "uplink"   // holds the node IP
	LinkTunnel   = "tunnel"   // IPIP: tunl0 or a per-peer tun-*
	LinkVXLAN    = "vxlan"    // vxlan.kdive
	LinkPodVeth  = "pod-veth" // the host side of a pod's veth
	LinkBridge   = "bridge"   // kube-bridge (bridge mode)
	LinkIPVS     = "ipvs"     // kube-ipvs0, holding the service IPs
	LinkLoopback = "loopback"
	LinkForeign  = "foreign" // not kdive's
)

// IPVSDevice is the dummy device kube-proxy's (and kdive's) IPVS mode puts
// every service address on.
const IPVSDevice = ipvs.Device

// LinkRow is one interface of the node and its role.
type LinkRow struct {
	Name   string   `json:"name"`
	Index  int      `json:"index"`
	Type   string   `json:"type"` // the kernel's link type: veth, bridge, ipip, vxlan, dummy, ...
	Up     bool     `json:"up"`
	MTU    int      `json:"mtu"`
	MAC    string   `json:"mac,omitempty"`
	Addrs  []string `json:"addrs,omitempty"`
	Alias  string   `json:"alias,omitempty"`
	Master string   `json:"master,omitempty"` // the bridge it is a port of
	Role   string   `json:"role"`
	// Pod and Attachment (containerID/ifname): a pod veth's pod.
	Pod        string `json:"pod,omitempty"`
	Attachment string `json:"attachment,omitempty"`
	// Peers are a tunnel's or VXLAN device's remote nodes.
	Peers []LinkPeer `json:"peers,omitempty"`
	// Ports are a bridge's ports; ServiceIPs kube-ipvs0's addresses.
	Ports      []string `json:"ports,omitempty"`
	ServiceIPs []string `json:"serviceIPs,omitempty"`
	Meaning    string   `json:"meaning"`
}

// LinkPeer is one remote end of a tunnel: a node's underlay IP and, for
// VXLAN, its VTEP MAC (from the FDB).
type LinkPeer struct {
	Node string `json:"node,omitempty"`
	IP   string `json:"ip"`
	MAC  string `json:"mac,omitempty"`
}

// AnnotateLinks gives every interface of ks its role in topo, in the
// kernel's order (by index).
func AnnotateLinks(topo *Topology, ks *KernelState) []LinkRow {
	v := newView(topo, ks)
	// Pod veths found through a CNI /32 route, for veths without an alias.
	routed := map[string]netip.Addr{}
	for _, r := range ks.Routes {
		if r.Protocol == kernel.RouteProtocolCNI && r.Dev != "" && r.Dst.IsSingleIP() {
			routed[r.Dev] = r.Dst.Addr()
		}
	}
	rows := make([]LinkRow, 0, len(ks.Links))
	for _, l := range ks.Links {
		row := LinkRow{Name: l.Name, Index: l.Index, Type: l.Type, Up: l.Up, MTU: l.MTU, Alias: l.Alias}
		if l.MAC != nil {
			row.MAC = l.MAC.String()
		}
		for _, a := range l.Addrs {
			if a.Addr().Is4() {
				row.Addrs = append(row.Addrs, a.String())
			}
		}
		if m, ok := ks.linkByIndex(l.Master); ok && l.Master != 0 {
			row.Master = m.Name
		}
		v.linkRole(l, routed, &row)
		rows = append(rows, row)
	}
	return rows
}

func (v *view) linkRole(l kernel.Link, routed map[string]netip.Addr, row *LinkRow) {
	switch {
	case l.Name == "lo" || l.Type == "loopback":
		row.Role, row.Meaning = LinkLoopback, "loopback"
	case l.Name == v.uplink && v.uplink != "":
		row.Role = LinkUplink
		row.Meaning = "uplink"
		if v.local.IP.IsValid() {
			row.Meaning = fmt.Sprintf("uplink: holds node IP %s (%s)", v.local.IP, v.local.Name)
		}
	case l.Type == "vxlan":
		v.vxlanRole(l, row)
	case l.Type == "ipip":
		v.ipipRole(l, row)
	case l.Type == "veth" && (strings.HasPrefix(l.Alias, "kdive-cni:") || routed[l.Name].IsValid()):
		v.podVethRole(l, routed[l.Name], row)
	case l.Type == "bridge" && (l.Name == v.bridge || strings.HasPrefix(l.Alias, "kdive-cni:")):
		row.Role = LinkBridge
		for _, o := range v.ks.Links {
			if o.Master == l.Index {
				row.Ports = append(row.Ports, o.Name)
			}
		}
		gw := "no address"
		if len(row.Addrs) > 0 {
			gw = "gateway " + strings.Join(row.Addrs, ", ")
		}
		row.Meaning = fmt.Sprintf("pod bridge (bridge mode): %s, %d pod port(s)", gw, len(row.Ports))
	case l.Name == IPVSDevice:
		row.Role = LinkIPVS
		var named []string
		for _, a := range l.Addrs {
			if !a.Addr().Is4() {
				continue
			}
			row.ServiceIPs = append(row.ServiceIPs, a.Addr().String())
			if svcs := v.topo.servicesAt(a.Addr()); len(svcs) > 0 {
				named = append(named, a.Addr().String()+" "+strings.Join(svcs, ","))
			}
		}
		row.Meaning = fmt.Sprintf("IPVS mode: holds %d service IP(s), so the node accepts packets for them", len(row.ServiceIPs))
		if len(named) > 0 {
			row.Meaning += ": " + strings.Join(named, "; ")
		}
	default:
		row.Role = LinkForeign
		row.Meaning = fmt.Sprintf("foreign: %s link, not kdive's", l.Type)
	}
}

func (v *view) vxlanRole(l kernel.Link, row *LinkRow) {
	t, _ := v.ks.tunnel(l.Name)
	if l.Name != podnet.VXLANDevice && t.Alias != podnet.LinkAlias {
		row.Role = LinkForeign
		row.Meaning = "foreign: a VXLAN device that is not kdive's"
		return
	}
	row.Role = LinkVXLAN
	for _, e := range v.ks.FDB[l.Name] {
		p := LinkPeer{IP: e.Dst.String(), MAC: e.MAC.String()}
		if n, ok := v.topo.nodeByIP(e.Dst); ok {
			p.Node = n.Name
		}
		row.Peers = append(row.Peers, p)
	}
	row.Meaning = fmt.Sprintf("VXLAN VNI %d port %d, local %s: pod traffic to %s", t.VNI, t.Port, orUnknown(t.Local), peerList(row.Peers))
}

func (v *view) ipipRole(l kernel.Link, row *LinkRow) {
	t, _ := v.ks.tunnel(l.Name)
	switch {
	case l.Name == kernel.IPIPFallback:
		row.Role = LinkTunnel
		// tunl0 has no remote: its peers are the gateways of the routes
		// through it.
		seen := map[netip.Addr]bool{}
		for _, r := range v.ks.Routes {
			if r.Dev != l.Name || !r.Gateway.IsValid() || seen[r.Gateway] {
				continue
			}
			seen[r.Gateway] = true
			p := LinkPeer{IP: r.Gateway.String()}
			if n, ok := v.topo.nodeByIP(r.Gateway); ok {
				p.Node = n.Name
			}
			row.Peers = append(row.Peers, p)
		}
		if len(row.Peers) == 0 {
			row.Meaning = "IPIP fallback device, unused (no route through it)"
			return
		}
		row.Meaning = "IPIP fallback device (one for every peer; the outer destination is each route's gateway): pod traffic to " + peerList(row.Peers)
	case t.Alias == podnet.LinkAlias || (t.Remote.IsValid() && podnet.TunnelName(t.Remote) == l.Name):
		row.Role = LinkTunnel
		p := LinkPeer{IP: t.Remote.String()}
		if n, ok := v.topo.nodeByIP(t.Remote); ok {
			p.Node = n.Name
		}
		row.Peers = []LinkPeer{p}
		row.Meaning = fmt.Sprintf("IPIP tunnel to %s, local %s", peerList(row.Peers), orUnknown(t.Local))
	default:
		row.Role = LinkForeign
		row.Meaning = "foreign: an IPIP device that is not kdive's"
	}
}

func (v *view) podVethRole(l kernel.Link, routedIP netip.Addr, row *LinkRow) {
	row.Role = LinkPodVeth
	a, hasAtt := vethAttachment(l.Alias)
	if hasAtt {
		row.Attachment = a.String()
	}
	var pod Pod
	found := false
	if hasAtt {
		pod, found = v.podOfAttachment(a)
	}
	ip := routedIP
	if !found && ip.IsValid() {
		pod, found = v.topo.podByIP(ip, v.local.Name)
	}
	if found && !ip.IsValid() {
		ip = pod.IP
	}
	name := pod.FullName()
	if name != "" {
		row.Pod = name
	}
	switch {
	case found && name != "":
		row.Meaning = "host side of pod " + name + "'s veth"
	case hasAtt:
		row.Meaning = fmt.Sprintf("host side of a pod veth (container %s, pod name unknown)", shortID(a.ContainerID))
	default:
		row.Meaning = "host side of a pod veth (pod unknown)"
	}
	if ip.IsValid() {
		row.Meaning += " (" + ip.String() + ")"
	}
	if row.Master != "" {
		row.Meaning += ", port of " + row.Master
	}
}

// peerList prints peers as "node-3 (172.20.2.10), 172.20.9.9".
func peerList(ps []LinkPeer) string {
	if len(ps) == 0 {
		return "no peer yet"
	}
	out := make([]string, 0, len(ps))
	for _, p := range ps {
		if p.Node != "" {
			out = append(out, fmt.Sprintf("%s (%s)", p.Node, p.IP))
		} else {
			out = append(out, p.IP)
		}
	}
	slices.Sort(out)
	return strings.Join(out, ", ")
}

func orUnknown(a netip.Addr) string {
	if a.IsValid() {
		return a.String()
	}
	return "any"
}
