package kernel

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// EnsureDummy creates a dummy device unless one of that name exists, and
// reports whether it created it. The device is left down, as kube-proxy
// leaves kube-ipvs0: the kernel adds local routes for its addresses all
// the same, and a down device never answers ARP for them. A link of that
// name that is not a dummy device is an error.
func (n *NetNS) EnsureDummy(name string, attrs LinkAttrs) (created bool, err error) {
	l, err := n.nl.LinkByName(name)
	if err == nil {
		if l.Type() != "dummy" {
			return false, fmt.Errorf("ensure dummy %s/%s: a %s link has that name", n, name, l.Type())
		}
		return false, nil
	}
	var nf netlink.LinkNotFoundError
	if !errors.As(err, &nf) {
		return false, fmt.Errorf("link %s/%s: %w", n, name, err)
	}
	la := netlink.NewLinkAttrs()
	la.Name = name
	attrs.apply(&la)
	if err := n.nl.LinkAdd(&netlink.Dummy{LinkAttrs: la}); err != nil {
		return false, fmt.Errorf("add dummy %s/%s: %w", n, name, err)
	}
	return true, n.setAlias(name, attrs.Alias)
}

// DelAddr removes an address from a link; an address the link does not
// have is not an error.
func (n *NetNS) DelAddr(name string, p netip.Prefix) error {
	l, err := n.link(name)
	if err != nil {
		return err
	}
	if err := n.nl.AddrDel(l, &netlink.Addr{IPNet: prefixToIPNet(p)}); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
		return fmt.Errorf("delete address %s from %s/%s: %w", p, n, name, err)
	}
	return nil
}
