package diag

import (
	"net/netip"
	"strconv"
	"strings"

	"github.com/kdive/kdive/internal/cni"
	"github.com/kdive/kdive/internal/cni/ipam"
	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/podnet"
)

// view is what every annotator derives first from a topology and a
// kernel state: this node, its uplink and its underlay subnet.
type view struct {
	topo   *Topology
	ks     *KernelState
	local  Node
	uplink string
	// subnet is this node's underlay subnet; invalid when unknown.
	subnet netip.Prefix
	bridge string
}

func newView(topo *Topology, ks *KernelState) *view {
	v := &view{topo: topo, ks: ks, local: topo.local(), uplink: topo.Uplink, subnet: topo.local().Subnet, bridge: topo.Bridge}
	if v.bridge == "" {
		v.bridge = cni.DefaultBridge
	}
	if v.local.IP.IsValid() {
		for _, l := range ks.Links {
			for _, a := range l.Addrs {
				if a.Addr() == v.local.IP {
					v.uplink = l.Name
					if !v.subnet.IsValid() {
						v.subnet = a.Masked()
					}
				}
			}
		}
	}
	return v
}

// sameSubnet reports whether a peer IP is in this node's subnet; ok is
// false when either is unknown.
func (v *view) sameSubnet(peer netip.Addr) (same, ok bool) {
	if !v.subnet.IsValid() || !peer.IsValid() {
		return false, false
	}
	return v.subnet.Contains(peer), true
}

// vethAttachment reads the CNI attachment from a host-side veth's alias,
// "kdive-cni:<containerID>/<ifname>" (package cni's contract).
func vethAttachment(alias string) (ipam.Attachment, bool) {
	rest, ok := strings.CutPrefix(alias, "kdive-cni:")
	if !ok {
		return ipam.Attachment{}, false
	}
	id, ifname, ok := strings.Cut(rest, "/")
	if !ok || id == "" || ifname == "" {
		return ipam.Attachment{}, false
	}
	return ipam.Attachment{ContainerID: id, IfName: ifname}, true
}

// podOfAttachment finds the pod of an attachment: by its ID in the
// topology, else through the IPAM store's address for it.
func (v *view) podOfAttachment(a ipam.Attachment) (Pod, bool) {
	if p, ok := v.topo.podByAttachment(a); ok {
		return p, true
	}
	if v.local.IPAM != nil {
		for _, al := range v.local.IPAM.Allocations {
			if al.Attachment == a {
				if p, ok := v.topo.podByIP(al.Addr, v.local.Name); ok {
					return p, true
				}
			}
		}
	}
	return Pod{}, false
}

// allocation finds the local IPAM allocation of an address.
func (v *view) allocation(a netip.Addr) (ipam.Allocation, bool) {
	if v.local.IPAM == nil {
		return ipam.Allocation{}, false
	}
	for _, al := range v.local.IPAM.Allocations {
		if al.Addr == a {
			return al, true
		}
	}
	return ipam.Allocation{}, false
}

// encapOf tells how a route's device carries pod traffic: the encap
// ("none", "ipip", "vxlan") and the words for it.
func (v *view) encapOf(dev string) (encap, words string) {
	switch {
	case dev == kernel.IPIPFallback:
		return "ipip", "IPIP"
	case dev == podnet.VXLANDevice:
		return "vxlan", "VXLAN"
	}
	if t, ok := v.ks.tunnel(dev); ok {
		if t.Kind == kernel.TunnelVXLAN {
			return "vxlan", "VXLAN"
		}
		return "ipip", "IPIP tunnel"
	}
	return "none", "direct"
}

// protoName names a route protocol as `ip route` does, and kdive's own.
func protoName(p int) string {
	switch p {
	case kernel.RouteProtocolAgent:
		return "kdive-agent"
	case kernel.RouteProtocolCNI:
		return "kdive-cni"
	case 0:
		return "unspec"
	case 1:
		return "redirect"
	case 2:
		return "kernel"
	case 3:
		return "boot"
	case 4:
		return "static"
	case 16:
		return "dhcp"
	case 186:
		return "bgp"
	case 188:
		return "ospf"
	}
	return strconv.Itoa(p)
}
