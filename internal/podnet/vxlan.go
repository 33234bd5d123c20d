package podnet

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/model"
)

// The VXLAN device every node of a vxlan pod network has.
const (
	VXLANDevice = "vxlan.kdive"
	VXLANVNI    = 4096
	VXLANPort   = 4789 // IANA's VXLAN port
)

// VTEPMAC is the MAC of a node's VXLAN device, derived from its IPv4
// address: 0a:6b (locally administered, unicast; 0x6b as in the agent's
// route protocol) and the address's four bytes. Every node computes its
// peers' MACs instead of learning or exchanging them.
func VTEPMAC(nodeIP netip.Addr) net.HardwareAddr {
	b := nodeIP.As4()
	return net.HardwareAddr{0x0a, 0x6b, b[0], b[1], b[2], b[3]}
}

// vtepAddr is a node's VTEP (and tunnel source) address: its block's
// network address.
func vtepAddr(block netip.Prefix) netip.Addr { return block.Masked().Addr() }

func (r *renderer) vxlanDevice() {
	r.addLink(kernel.Tunnel{
		Name: VXLANDevice, Kind: kernel.TunnelVXLAN, Local: r.p.NodeIP, VNI: VXLANVNI, Port: VXLANPort,
		Dev: r.opts.Uplink, MAC: VTEPMAC(r.p.NodeIP),
	}, r.p.Node, fmt.Sprintf("VXLAN device, VTEP %s with a MAC derived from %s; static FDB, no learning, no multicast",
		r.vtep.Addr(), r.p.NodeIP))
}

// vxlanPeer adds what reaches one peer through the VXLAN device: its VTEP's
// MAC is behind its node IP (FDB), its VTEP address has that MAC
// (neighbour), and its block is behind its VTEP address (route).
func (r *renderer) vxlanPeer(peer model.Node) {
	mac, vtep := VTEPMAC(peer.IP()), vtepAddr(peer.PodCIDR)
	r.p.FDB = append(r.p.FDB, FDBEntry{
		Entry: kernel.FDBEntry{Dev: VXLANDevice, MAC: mac, Dst: peer.IP()}, Node: peer.Name,
		Reason: fmt.Sprintf("%s's VTEP is at %s", peer.Name, peer.IP()),
	})
	r.p.Neighbors = append(r.p.Neighbors, NeighEntry{
		Neighbor: kernel.Neighbor{Dev: VXLANDevice, IP: vtep, MAC: mac, Permanent: true}, Node: peer.Name,
		Reason: fmt.Sprintf("%s's VTEP address", peer.Name),
	})
	r.addRoute(kernel.Route{Dst: peer.PodCIDR, Gateway: vtep, Dev: VXLANDevice, OnLink: true}, peer.Name,
		fmt.Sprintf("pod block %s of %s via %s (VXLAN, %s)", peer.PodCIDR, peer.Name, VXLANDevice, r.policy()))
}
