package kernel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TunnelKind is the type of a tunnel device.
type TunnelKind string

const (
	TunnelIPIP  TunnelKind = "ipip"
	TunnelVXLAN TunnelKind = "vxlan"
)

// IPIPFallback is the IPIP fallback device, which the ipip module creates in
// every network namespace. It has no local or remote address, so it receives
// every IPIP packet no other tunnel claims (once up) and sends to the
// gateway of the route that uses it. It cannot be deleted.
const IPIPFallback = "tunl0"

// Tunnel is an IPIP or VXLAN device, as EnsureTunnel creates it and as
// Tunnels reads it back.
type Tunnel struct {
	Name string
	Kind TunnelKind
	// Local and Remote are the outer addresses; invalid means "any". The
	// IPIP fallback device has neither; a per-peer IPIP tunnel has both;
	// a VXLAN device has only Local (remotes come from its FDB).
	Local, Remote netip.Addr
	// VXLAN only: the VNI, the UDP destination port, the underlay device
	// and whether the device learns remote MACs from received packets.
	VNI      int
	Port     int
	Dev      string
	Learning bool
	// MAC of a VXLAN device; nil lets the kernel choose. IPIP devices have
	// none.
	MAC net.HardwareAddr
	MTU int
	// Alias marks the owner (ifalias), as for LinkAttrs.Alias.
	Alias string
	// Addrs are the device's IPv4 addresses; EnsureTunnel makes them
	// exactly these (IPv6 link-local addresses are left alone).
	Addrs []netip.Prefix
	// Up is read back; EnsureTunnel always sets the device up.
	Up bool
}

// String prints the tunnel in the spirit of `ip -d link`.
func (t Tunnel) String() string {
	orAny := func(a netip.Addr) string {
		if a.IsValid() {
			return a.String()
		}
		return "any"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", t.Name, t.Kind)
	switch t.Kind {
	case TunnelVXLAN:
		fmt.Fprintf(&b, " id %d local %s", t.VNI, orAny(t.Local))
		if t.Dev != "" {
			fmt.Fprintf(&b, " dev %s", t.Dev)
		}
		fmt.Fprintf(&b, " dstport %d", t.Port)
		if !t.Learning {
			b.WriteString(" nolearning")
		}
		if t.MAC != nil {
			fmt.Fprintf(&b, " mac %s", t.MAC)
		}
	default:
		fmt.Fprintf(&b, " local %s remote %s", orAny(t.Local), orAny(t.Remote))
	}
	if t.MTU != 0 {
		fmt.Fprintf(&b, " mtu %d", t.MTU)
	}
	for _, a := range t.Addrs {
		fmt.Fprintf(&b, " addr %s", a)
	}
	return b.String()
}

// sameConfig reports whether a device read back has the parameters that
// can only be set when a device is created.
func (t Tunnel) sameConfig(got Tunnel) bool {
	if t.Kind != got.Kind || t.Local != got.Local {
		return false
	}
	if t.Kind == TunnelVXLAN {
		return t.VNI == got.VNI && t.Port == got.Port && t.Dev == got.Dev && t.Learning == got.Learning
	}
	return t.Remote == got.Remote
}

// EnsureTunnel makes the device named t.Name exactly t: it creates it when
// missing, recreates it when a parameter fixed at creation differs (kind,
// addresses, VNI, port, underlay device, learning), fixes MAC, MTU, alias
// and IPv4 addresses in place, and sets it up. It reports whether it
// changed anything. An IPIP device with no Local and Remote named
// IPIPFallback is the fallback device: it is configured, never recreated.
func (n *NetNS) EnsureTunnel(t Tunnel) (changed bool, err error) {
	cur, err := n.tunnel(t.Name)
	switch {
	case errors.Is(err, ErrNotFound):
	case err != nil:
		return false, err
	case !t.sameConfig(cur):
		if err := n.DeleteLink(t.Name); err != nil {
			return false, err
		}
	default:
		return n.fixTunnel(t, cur)
	}
	if err := n.addTunnel(t); err != nil {
		if !errors.Is(err, unix.EEXIST) || t.Name != IPIPFallback {
			return false, err
		}
		// Creating it loaded the ipip module, whose fallback device
		// appeared under this name first.
	}
	if cur, err = n.tunnel(t.Name); err != nil {
		return true, err
	}
	_, err = n.fixTunnel(t, cur)
	return true, err
}

func (n *NetNS) addTunnel(t Tunnel) error {
	la := netlink.NewLinkAttrs()
	la.Name = t.Name
	la.MTU = t.MTU
	var link netlink.Link
	switch t.Kind {
	case TunnelIPIP:
		// PMtuDisc sets DF on the outer header, so a wrong MTU shows up
		// as an error rather than as fragments on the underlay.
		link = &netlink.Iptun{LinkAttrs: la, Local: ipOrNil(t.Local), Remote: ipOrNil(t.Remote), PMtuDisc: 1}
	case TunnelVXLAN:
		la.HardwareAddr = t.MAC
		v := &netlink.Vxlan{LinkAttrs: la, VxlanId: t.VNI, SrcAddr: ipOrNil(t.Local), Port: t.Port, Learning: t.Learning}
		if t.Dev != "" {
			dev, err := n.link(t.Dev)
			if err != nil {
				return fmt.Errorf("add %s tunnel %s/%s: %w", t.Kind, n, t.Name, err)
			}
			v.VtepDevIndex = dev.Attrs().Index
		}
		link = v
	default:
		return fmt.Errorf("add tunnel %s/%s: unknown kind %q", n, t.Name, t.Kind)
	}
	if err := n.nl.LinkAdd(link); err != nil {
		return fmt.Errorf("add %s tunnel %s/%s: %w", t.Kind, n, t.Name, err)
	}
	return nil
}

// fixTunnel sets what can change on a live device. It tries every
// attribute, so one that fails (an MTU the underlay cannot carry) does not
// leave the device down.
func (n *NetNS) fixTunnel(t, cur Tunnel) (changed bool, err error) {
	l, err := n.link(t.Name)
	if err != nil {
		return false, err
	}
	var errs []error
	if t.MAC != nil && cur.MAC.String() != t.MAC.String() {
		changed = true
		if err := n.nl.LinkSetHardwareAddr(l, t.MAC); err != nil {
			errs = append(errs, fmt.Errorf("set mac of %s/%s to %s: %w", n, t.Name, t.MAC, err))
		}
	}
	if t.MTU != 0 && cur.MTU != t.MTU {
		changed = true
		if err := n.nl.LinkSetMTU(l, t.MTU); err != nil {
			errs = append(errs, fmt.Errorf("set mtu of %s/%s to %d: %w", n, t.Name, t.MTU, err))
		}
	}
	if cur.Alias != t.Alias {
		changed = true
		if err := n.nl.LinkSetAlias(l, t.Alias); err != nil {
			errs = append(errs, fmt.Errorf("set alias of %s/%s: %w", n, t.Name, err))
		}
	}
	c, err := n.setAddrs(l, cur.Addrs, t.Addrs)
	changed = changed || c
	errs = append(errs, err)
	if !cur.Up {
		changed = true
		if err := n.nl.LinkSetUp(l); err != nil {
			errs = append(errs, fmt.Errorf("set %s/%s up: %w", n, t.Name, err))
		}
	}
	return changed, errors.Join(errs...)
}

// setAddrs makes the link's IPv4 addresses exactly want.
func (n *NetNS) setAddrs(l netlink.Link, have, want []netip.Prefix) (changed bool, err error) {
	name := l.Attrs().Name
	for _, p := range have {
		if p.Addr().Is4() && !slices.Contains(want, p) {
			changed = true
			if err := n.nl.AddrDel(l, &netlink.Addr{IPNet: prefixToIPNet(p)}); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
				return changed, fmt.Errorf("delete address %s from %s/%s: %w", p, n, name, err)
			}
		}
	}
	for _, p := range want {
		if !slices.Contains(have, p) {
			changed = true
			if err := n.nl.AddrAdd(l, &netlink.Addr{IPNet: prefixToIPNet(p)}); err != nil && !errors.Is(err, unix.EEXIST) {
				return changed, fmt.Errorf("add address %s to %s/%s: %w", p, n, name, err)
			}
		}
	}
	return changed, nil
}

// DeleteTunnel removes a tunnel device; a missing one is not an error. The
// IPIP fallback device cannot be deleted: it is released instead (IPv4
// addresses removed, set down, alias cleared), so it no longer receives.
func (n *NetNS) DeleteTunnel(name string) error {
	if err := n.DeleteLink(name); err != nil {
		return err
	}
	l, err := n.nl.LinkByName(name)
	if err != nil {
		return nil // gone
	}
	cur, err := n.tunnel(name)
	if err != nil {
		return err
	}
	if _, err := n.setAddrs(l, cur.Addrs, nil); err != nil {
		return err
	}
	if err := n.nl.LinkSetDown(l); err != nil {
		return fmt.Errorf("set %s/%s down: %w", n, name, err)
	}
	if err := n.nl.LinkSetAlias(l, ""); err != nil {
		return fmt.Errorf("clear alias of %s/%s: %w", n, name, err)
	}
	return nil
}

// Tunnels lists the namespace's IPIP and VXLAN devices.
func (n *NetNS) Tunnels() ([]Tunnel, error) {
	ls, err := n.nl.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links in %s: %w", n, err)
	}
	var out []Tunnel
	for _, l := range ls {
		if t, ok, err := n.toTunnel(l); err != nil {
			return nil, err
		} else if ok {
			out = append(out, t)
		}
	}
	return out, nil
}

// tunnel reads one tunnel device back; ErrNotFound when there is no link
// of that name. A link of another kind reads back with that kind.
func (n *NetNS) tunnel(name string) (Tunnel, error) {
	l, err := n.nl.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return Tunnel{}, fmt.Errorf("link %s/%s: %w", n, name, ErrNotFound)
		}
		return Tunnel{}, fmt.Errorf("link %s/%s: %w", n, name, err)
	}
	t, ok, err := n.toTunnel(l)
	if err == nil && !ok {
		t = Tunnel{Name: name, Kind: TunnelKind(l.Type())}
	}
	return t, err
}

func (n *NetNS) toTunnel(l netlink.Link) (Tunnel, bool, error) {
	a := l.Attrs()
	t := Tunnel{Name: a.Name, MTU: a.MTU, Alias: a.Alias, Up: a.Flags&net.FlagUp != 0}
	switch v := l.(type) {
	case *netlink.Iptun:
		t.Kind = TunnelIPIP
		t.Local, t.Remote = addrOrZero(v.Local), addrOrZero(v.Remote)
	case *netlink.Vxlan:
		t.Kind = TunnelVXLAN
		t.Local = addrOrZero(v.SrcAddr)
		t.VNI, t.Port, t.Learning, t.MAC = v.VxlanId, v.Port, v.Learning, a.HardwareAddr
		if v.VtepDevIndex != 0 {
			if dev, err := n.nl.LinkByIndex(v.VtepDevIndex); err == nil {
				t.Dev = dev.Attrs().Name
			}
		}
	default:
		return Tunnel{}, false, nil
	}
	addrs, err := n.nl.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		return Tunnel{}, false, fmt.Errorf("list addresses of %s/%s: %w", n, a.Name, err)
	}
	for _, ad := range addrs {
		if p, ok := ipNetToPrefix(ad.IPNet); ok {
			t.Addrs = append(t.Addrs, p)
		}
	}
	return t, true, nil
}

func ipOrNil(a netip.Addr) net.IP {
	if !a.IsValid() {
		return nil
	}
	return net.IP(a.AsSlice())
}

// addrOrZero converts a tunnel endpoint; 0.0.0.0 (any) becomes invalid.
func addrOrZero(ip net.IP) netip.Addr {
	a, ok := netip.AddrFromSlice(ip)
	if !ok || a.Unmap().IsUnspecified() {
		return netip.Addr{}
	}
	return a.Unmap()
}
