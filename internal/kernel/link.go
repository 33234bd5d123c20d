package kernel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// LinkAttrs are the attributes kdive sets on links it creates.
type LinkAttrs struct {
	// MAC is the hardware address; empty lets the kernel choose.
	MAC net.HardwareAddr
	// MTU; 0 keeps the kernel default.
	MTU int
	// Alias is the link's ifalias; kdive marks its links with their owner
	// (e.g. "kdive-lab:demo") so they can be recognised and cleaned up.
	Alias string
}

func (a LinkAttrs) apply(la *netlink.LinkAttrs) {
	if a.MAC != nil {
		la.HardwareAddr = a.MAC
	}
	if a.MTU != 0 {
		la.MTU = a.MTU
	}
}

// Link describes an interface as read back from the kernel.
type Link struct {
	Index  int
	Name   string
	Type   string
	MAC    net.HardwareAddr
	MTU    int
	Up     bool
	Alias  string
	Master int
	Addrs  []netip.Prefix
}

// AddVeth creates a veth pair: name in this namespace and peerName in peer.
// Both ends are left down.
func (n *NetNS) AddVeth(name string, attrs LinkAttrs, peer *NetNS, peerName string, peerAttrs LinkAttrs) error {
	la := netlink.NewLinkAttrs()
	la.Name = name
	attrs.apply(&la)
	v := &netlink.Veth{LinkAttrs: la, PeerName: peerName, PeerHardwareAddr: peerAttrs.MAC}
	if peer != nil && peer != n {
		v.PeerNamespace = netlink.NsFd(peer.fd)
	}
	if err := n.nl.LinkAdd(v); err != nil {
		return fmt.Errorf("add veth %s/%s <-> %s/%s: %w", n, name, peerOrSelf(peer, n), peerName, err)
	}
	if err := n.setAlias(name, attrs.Alias); err != nil {
		return err
	}
	p := peerOrSelf(peer, n)
	if peerAttrs.MTU != 0 && peerAttrs.MTU != attrs.MTU {
		if err := p.SetMTU(peerName, peerAttrs.MTU); err != nil {
			return err
		}
	}
	return p.setAlias(peerName, peerAttrs.Alias)
}

func peerOrSelf(peer, self *NetNS) *NetNS {
	if peer == nil {
		return self
	}
	return peer
}

// AddBridge creates a Linux bridge, left down.
func (n *NetNS) AddBridge(name string, attrs LinkAttrs) error {
	la := netlink.NewLinkAttrs()
	la.Name = name
	attrs.apply(&la)
	if err := n.nl.LinkAdd(&netlink.Bridge{LinkAttrs: la}); err != nil {
		return fmt.Errorf("add bridge %s/%s: %w", n, name, err)
	}
	return n.setAlias(name, attrs.Alias)
}

func (n *NetNS) setAlias(name, alias string) error {
	if alias == "" {
		return nil
	}
	l, err := n.link(name)
	if err != nil {
		return err
	}
	if err := n.nl.LinkSetAlias(l, alias); err != nil {
		return fmt.Errorf("set alias of %s/%s: %w", n, name, err)
	}
	return nil
}

func (n *NetNS) link(name string) (netlink.Link, error) {
	l, err := n.nl.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("link %s/%s: %w", n, name, err)
	}
	return l, nil
}

// SetMaster enslaves link to master (a bridge).
func (n *NetNS) SetMaster(link, master string) error {
	l, err := n.link(link)
	if err != nil {
		return err
	}
	m, err := n.link(master)
	if err != nil {
		return err
	}
	if err := n.nl.LinkSetMaster(l, m); err != nil {
		return fmt.Errorf("attach %s/%s to %s: %w", n, link, master, err)
	}
	return nil
}

// LinkUp sets a link up.
func (n *NetNS) LinkUp(name string) error {
	l, err := n.link(name)
	if err != nil {
		return err
	}
	if err := n.nl.LinkSetUp(l); err != nil {
		return fmt.Errorf("set %s/%s up: %w", n, name, err)
	}
	return nil
}

// SetMTU sets a link's MTU.
func (n *NetNS) SetMTU(name string, mtu int) error {
	l, err := n.link(name)
	if err != nil {
		return err
	}
	if err := n.nl.LinkSetMTU(l, mtu); err != nil {
		return fmt.Errorf("set mtu of %s/%s to %d: %w", n, name, mtu, err)
	}
	return nil
}

// DeleteLink removes a link; a missing link is not an error.
func (n *NetNS) DeleteLink(name string) error {
	l, err := n.nl.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("link %s/%s: %w", n, name, err)
	}
	if err := n.nl.LinkDel(l); err != nil {
		return fmt.Errorf("delete link %s/%s: %w", n, name, err)
	}
	return nil
}

// AddAddr assigns an address (with its prefix length) to a link. Assigning
// an address the link already has is not an error.
func (n *NetNS) AddAddr(name string, p netip.Prefix) error {
	l, err := n.link(name)
	if err != nil {
		return err
	}
	a := &netlink.Addr{IPNet: prefixToIPNet(p)}
	if err := n.nl.AddrAdd(l, a); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add address %s to %s/%s: %w", p, n, name, err)
	}
	return nil
}

// Links lists the namespace's interfaces with their addresses.
func (n *NetNS) Links() ([]Link, error) {
	ls, err := n.nl.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links in %s: %w", n, err)
	}
	out := make([]Link, 0, len(ls))
	for _, l := range ls {
		a := l.Attrs()
		lk := Link{
			Index: a.Index, Name: a.Name, Type: l.Type(), MAC: a.HardwareAddr, MTU: a.MTU,
			Up: a.Flags&net.FlagUp != 0, Alias: a.Alias, Master: a.MasterIndex,
		}
		addrs, err := n.nl.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			return nil, fmt.Errorf("list addresses of %s/%s: %w", n, a.Name, err)
		}
		for _, ad := range addrs {
			if p, ok := ipNetToPrefix(ad.IPNet); ok {
				lk.Addrs = append(lk.Addrs, p)
			}
		}
		out = append(out, lk)
	}
	return out, nil
}

// LinkByName returns one interface, or an error wrapping ErrNotFound.
func (n *NetNS) LinkByName(name string) (Link, error) {
	ls, err := n.Links()
	if err != nil {
		return Link{}, err
	}
	for _, l := range ls {
		if l.Name == name {
			return l, nil
		}
	}
	return Link{}, fmt.Errorf("link %s/%s: %w", n, name, ErrNotFound)
}

// ErrNotFound is wrapped by errors for objects that do not exist.
var ErrNotFound = errors.New("not found")

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	bits := 32
	if p.Addr().Is6() && !p.Addr().Is4In6() {
		bits = 128
	}
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), bits)}
}

func ipNetToPrefix(ipn *net.IPNet) (netip.Prefix, bool) {
	if ipn == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(ipn.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := ipn.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}
