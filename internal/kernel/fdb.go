package kernel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// FDBEntry is a static forwarding entry of a VXLAN device (`bridge fdb
// append MAC dev DEV dst DST self permanent`): frames for MAC are sent in a
// VXLAN packet to the VTEP at Dst.
type FDBEntry struct {
	Dev string
	MAC net.HardwareAddr
	Dst netip.Addr
}

func (e FDBEntry) String() string {
	return fmt.Sprintf("%s dst %s dev %s self permanent", e.MAC, e.Dst, e.Dev)
}

func (n *NetNS) fdbNeigh(e FDBEntry) (*netlink.Neigh, error) {
	l, err := n.link(e.Dev)
	if err != nil {
		return nil, err
	}
	return &netlink.Neigh{
		LinkIndex: l.Attrs().Index, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF,
		State: netlink.NUD_PERMANENT, HardwareAddr: e.MAC, IP: net.IP(e.Dst.AsSlice()),
	}, nil
}

// ReplaceFDB installs a permanent FDB entry, replacing the destination of
// an existing entry for the same MAC.
func (n *NetNS) ReplaceFDB(e FDBEntry) error {
	nb, err := n.fdbNeigh(e)
	if err == nil {
		err = n.nl.NeighSet(nb)
	}
	if err != nil {
		return fmt.Errorf("replace fdb entry %s in %s: %w", e, n, err)
	}
	return nil
}

// DeleteFDB removes an FDB entry; a missing entry is not an error.
func (n *NetNS) DeleteFDB(e FDBEntry) error {
	nb, err := n.fdbNeigh(e)
	if err == nil {
		err = n.nl.NeighDel(nb)
	}
	if err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete fdb entry %s in %s: %w", e, n, err)
	}
	return nil
}

// FDB lists the permanent entries with a destination on a VXLAN device.
func (n *NetNS) FDB(dev string) ([]FDBEntry, error) {
	l, err := n.link(dev)
	if err != nil {
		return nil, err
	}
	nbs, err := n.nl.NeighList(l.Attrs().Index, unix.AF_BRIDGE)
	if err != nil {
		return nil, fmt.Errorf("list fdb of %s/%s: %w", n, dev, err)
	}
	var out []FDBEntry
	for _, nb := range nbs {
		dst, ok := netip.AddrFromSlice(nb.IP)
		if !ok || nb.State&netlink.NUD_PERMANENT == 0 || nb.HardwareAddr == nil {
			continue
		}
		out = append(out, FDBEntry{Dev: dev, MAC: nb.HardwareAddr, Dst: dst.Unmap()})
	}
	return out, nil
}
