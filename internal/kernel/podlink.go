package kernel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// This file holds what the CNI plugin needs beyond the lab's basics: telling
// namespaces apart, reading one link cheaply, the pod's host-side veth and
// bridge port, and asking the kernel how it would route an address.

// SameNetNS reports whether n and o are the same network namespace (the
// same nsfs inode), however each was opened.
func (n *NetNS) SameNetNS(o *NetNS) (bool, error) {
	var a, b unix.Stat_t
	if err := unix.Fstat(int(n.fd), &a); err != nil {
		return false, fmt.Errorf("stat netns %s: %w", n, err)
	}
	if err := unix.Fstat(int(o.fd), &b); err != nil {
		return false, fmt.Errorf("stat netns %s: %w", o, err)
	}
	return a.Dev == b.Dev && a.Ino == b.Ino, nil
}

// LinkInfo returns one interface with its addresses, asking the kernel for
// that link only (Links lists them all). A missing link is an error
// wrapping ErrNotFound.
func (n *NetNS) LinkInfo(name string) (Link, error) {
	l, err := n.nl.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return Link{}, fmt.Errorf("link %s/%s: %w", n, name, ErrNotFound)
		}
		return Link{}, fmt.Errorf("link %s/%s: %w", n, name, err)
	}
	a := l.Attrs()
	lk := Link{
		Index: a.Index, Name: a.Name, Type: l.Type(), MAC: a.HardwareAddr, MTU: a.MTU,
		Up: a.Flags&net.FlagUp != 0, Alias: a.Alias, Master: a.MasterIndex,
	}
	addrs, err := n.nl.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return Link{}, fmt.Errorf("list addresses of %s/%s: %w", n, name, err)
	}
	for _, ad := range addrs {
		if p, ok := ipNetToPrefix(ad.IPNet); ok {
			lk.Addrs = append(lk.Addrs, p)
		}
	}
	return lk, nil
}

// ErrNotVeth is wrapped by DeleteVeth's error when the named link exists
// but is not a veth (so it is not a pod's and is left alone).
var ErrNotVeth = errors.New("not a veth")

// DeleteVeth removes a veth (and with it its peer, wherever that is). A
// missing link is not an error (deleted is false); a link of another type
// is left in place and reported with an error wrapping ErrNotVeth.
func (n *NetNS) DeleteVeth(name string) (deleted bool, err error) {
	l, err := n.nl.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return false, nil
		}
		return false, fmt.Errorf("link %s/%s: %w", n, name, err)
	}
	if l.Type() != "veth" {
		return false, fmt.Errorf("delete veth %s/%s: it is a %s: %w", n, name, l.Type(), ErrNotVeth)
	}
	if err := n.nl.LinkDel(l); err != nil {
		if errors.Is(err, unix.ENODEV) {
			return false, nil // deleted under us (its peer went first)
		}
		return false, fmt.Errorf("delete veth %s/%s: %w", n, name, err)
	}
	return true, nil
}

// SetHairpin turns hairpin mode of a bridge port on or off: with it, the
// bridge sends a frame back out of the port it came in on, which a pod
// reaching itself through a service address needs.
func (n *NetNS) SetHairpin(name string, on bool) error {
	l, err := n.link(name)
	if err != nil {
		return err
	}
	if err := n.nl.LinkSetHairpin(l, on); err != nil {
		return fmt.Errorf("set hairpin of %s/%s to %t: %w", n, name, on, err)
	}
	return nil
}

// Hairpin reports whether hairpin mode is on for a bridge port.
func (n *NetNS) Hairpin(name string) (bool, error) {
	l, err := n.link(name)
	if err != nil {
		return false, err
	}
	pi, err := n.nl.LinkGetProtinfo(l)
	if err != nil {
		return false, fmt.Errorf("read bridge port info of %s/%s: %w", n, name, err)
	}
	return pi.Hairpin, nil
}

// EnsureBridge makes sure a bridge called name exists with attrs.MTU (when
// set), the address addr (when valid) and is up. It is safe to call
// concurrently from several processes: whoever loses the race to create it
// uses the winner's. A link of that name that is not a bridge is an error.
func (n *NetNS) EnsureBridge(name string, attrs LinkAttrs, addr netip.Prefix) error {
	l, err := n.nl.LinkByName(name)
	var nf netlink.LinkNotFoundError
	switch {
	case errors.As(err, &nf):
		la := netlink.NewLinkAttrs()
		la.Name = name
		attrs.apply(&la)
		if err := n.nl.LinkAdd(&netlink.Bridge{LinkAttrs: la}); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("add bridge %s/%s: %w", n, name, err)
		}
		if l, err = n.nl.LinkByName(name); err != nil {
			return fmt.Errorf("link %s/%s: %w", n, name, err)
		}
	case err != nil:
		return fmt.Errorf("link %s/%s: %w", n, name, err)
	}
	if l.Type() != "bridge" {
		return fmt.Errorf("bridge %s/%s: a %s of that name exists", n, name, l.Type())
	}
	if attrs.Alias != "" && l.Attrs().Alias == "" {
		if err := n.nl.LinkSetAlias(l, attrs.Alias); err != nil {
			return fmt.Errorf("set alias of %s/%s: %w", n, name, err)
		}
	}
	if attrs.MTU != 0 && l.Attrs().MTU != attrs.MTU {
		if err := n.nl.LinkSetMTU(l, attrs.MTU); err != nil {
			return fmt.Errorf("set mtu of %s/%s to %d: %w", n, name, attrs.MTU, err)
		}
	}
	if addr.IsValid() {
		if err := n.nl.AddrAdd(l, &netlink.Addr{IPNet: prefixToIPNet(addr)}); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("add address %s to %s/%s: %w", addr, n, name, err)
		}
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		if err := n.nl.LinkSetUp(l); err != nil {
			return fmt.Errorf("set %s/%s up: %w", n, name, err)
		}
	}
	return nil
}

// RouteTo asks the kernel how it would send a packet to dst from this
// namespace (`ip route get DST`). An unreachable destination is an error
// wrapping ErrNotFound.
func (n *NetNS) RouteTo(dst netip.Addr) (Route, error) {
	rs, err := n.nl.RouteGet(net.IP(dst.AsSlice()))
	if err != nil {
		if errors.Is(err, unix.ENETUNREACH) || errors.Is(err, unix.EHOSTUNREACH) || errors.Is(err, unix.EINVAL) {
			return Route{}, fmt.Errorf("route to %s in %s: %w (%w)", dst, n, ErrNotFound, err)
		}
		return Route{}, fmt.Errorf("route to %s in %s: %w", dst, n, err)
	}
	if len(rs) == 0 {
		return Route{}, fmt.Errorf("route to %s in %s: %w", dst, n, ErrNotFound)
	}
	nr := rs[0]
	r := Route{Dst: netip.PrefixFrom(dst, dst.BitLen()), Blackhole: nr.Type == unix.RTN_BLACKHOLE}
	if nr.LinkIndex != 0 {
		if l, err := n.nl.LinkByIndex(nr.LinkIndex); err == nil {
			r.Dev = l.Attrs().Name
		}
	}
	if a, ok := netip.AddrFromSlice(nr.Gw); ok {
		r.Gateway = a.Unmap()
	}
	if a, ok := netip.AddrFromSlice(nr.Src); ok {
		r.Src = a.Unmap()
	}
	return r, nil
}
