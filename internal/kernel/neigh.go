package kernel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Neighbor is an IPv4 neighbour (ARP) entry: IP on Dev has link-layer
// address MAC.
type Neighbor struct {
	Dev string
	IP  netip.Addr
	MAC net.HardwareAddr
	// Permanent entries never expire and are never re-resolved; kdive
	// only installs permanent entries.
	Permanent bool
}

func (e Neighbor) String() string {
	s := fmt.Sprintf("%s lladdr %s dev %s", e.IP, e.MAC, e.Dev)
	if e.Permanent {
		s += " permanent"
	}
	return s
}

func (n *NetNS) toNeigh(e Neighbor) (*netlink.Neigh, error) {
	l, err := n.link(e.Dev)
	if err != nil {
		return nil, err
	}
	return &netlink.Neigh{
		LinkIndex: l.Attrs().Index, Family: unix.AF_INET, State: netlink.NUD_PERMANENT,
		IP: net.IP(e.IP.AsSlice()), HardwareAddr: e.MAC,
	}, nil
}

// ReplaceNeighbor installs a permanent neighbour entry (`ip neigh replace
// ... nud permanent`).
func (n *NetNS) ReplaceNeighbor(e Neighbor) error {
	nb, err := n.toNeigh(e)
	if err == nil {
		err = n.nl.NeighSet(nb)
	}
	if err != nil {
		return fmt.Errorf("replace neighbour %s in %s: %w", e, n, err)
	}
	return nil
}

// DeleteNeighbor removes a neighbour entry; a missing entry is not an error.
func (n *NetNS) DeleteNeighbor(e Neighbor) error {
	nb, err := n.toNeigh(e)
	if err == nil {
		err = n.nl.NeighDel(nb)
	}
	if err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete neighbour %s in %s: %w", e, n, err)
	}
	return nil
}

// Neighbors lists the IPv4 neighbour entries of a device that have a
// link-layer address.
func (n *NetNS) Neighbors(dev string) ([]Neighbor, error) {
	l, err := n.link(dev)
	if err != nil {
		return nil, err
	}
	nbs, err := n.nl.NeighList(l.Attrs().Index, unix.AF_INET)
	if err != nil {
		return nil, fmt.Errorf("list neighbours of %s/%s: %w", n, dev, err)
	}
	var out []Neighbor
	for _, nb := range nbs {
		ip, ok := netip.AddrFromSlice(nb.IP)
		if !ok || nb.HardwareAddr == nil {
			continue
		}
		out = append(out, Neighbor{Dev: dev, IP: ip.Unmap(), MAC: nb.HardwareAddr, Permanent: nb.State&netlink.NUD_PERMANENT != 0})
	}
	return out, nil
}
