package kernel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Route is an IPv4/IPv6 unicast or blackhole route in the main table.
type Route struct {
	Dst       netip.Prefix // zero value: default route
	Gateway   netip.Addr   // optional
	Dev       string       // optional output interface
	Src       netip.Addr   // optional preferred source
	Blackhole bool
	OnLink    bool
	// Scope: 0 (universe) unless set, e.g. unix.RT_SCOPE_LINK for a
	// directly reachable gateway such as a pod's 169.254.1.1.
	Scope uint8
	// Metric is the route's priority; lower wins among routes to the same
	// destination.
	Metric int
	// Protocol marks who owns the route (see RouteProtocolAgent); 0
	// means the kernel's default for routes added by hand (boot).
	Protocol int
	// Nexthops, two or more, make the route multipath (ECMP): each flow
	// takes one of them, picked by a hash the namespace's
	// net.ipv4.fib_multipath_hash_policy chooses (0: addresses, 1: also
	// ports). Gateway and Dev are then unset.
	Nexthops []Nexthop
}

// Nexthop is one path of a multipath route.
type Nexthop struct {
	Gateway netip.Addr
	Dev     string
}

// Route protocol numbers (rtm_protocol) kdive marks its routes with, so each
// part removes only routes of its own and never someone else's.
const (
	// RouteProtocolAgent marks the node agent's routes (pod blocks of
	// peers, the node's own blackhole).
	RouteProtocolAgent = 0x6b
	// RouteProtocolCNI marks the CNI plugin's routes (a pod's /32).
	RouteProtocolCNI = 0x6c
)

// Equal reports whether r and o are the same route, field by field.
func (r Route) Equal(o Route) bool {
	return r.Dst == o.Dst && r.Gateway == o.Gateway && r.Dev == o.Dev && r.Src == o.Src &&
		r.Blackhole == o.Blackhole && r.OnLink == o.OnLink && r.Scope == o.Scope &&
		r.Metric == o.Metric && r.Protocol == o.Protocol && slices.Equal(r.Nexthops, o.Nexthops)
}

func (r Route) String() string {
	s := "default"
	if r.Dst.IsValid() {
		s = r.Dst.String()
	}
	if r.Blackhole {
		s = "blackhole " + s
	}
	if r.Gateway.IsValid() {
		s += " via " + r.Gateway.String()
	}
	if r.Dev != "" {
		s += " dev " + r.Dev
	}
	if r.OnLink {
		s += " onlink"
	}
	if r.Scope == unix.RT_SCOPE_LINK {
		s += " scope link"
	}
	if r.Src.IsValid() {
		s += " src " + r.Src.String()
	}
	for _, h := range r.Nexthops {
		s += " nexthop via " + h.Gateway.String()
		if h.Dev != "" {
			s += " dev " + h.Dev
		}
	}
	if r.Protocol != 0 {
		s += fmt.Sprintf(" proto %d", r.Protocol)
	}
	if r.Metric != 0 {
		s += fmt.Sprintf(" metric %d", r.Metric)
	}
	return s
}

func (n *NetNS) toNetlinkRoute(r Route) (*netlink.Route, error) {
	nr := &netlink.Route{}
	if r.Dst.IsValid() {
		nr.Dst = prefixToIPNet(r.Dst)
	} else {
		nr.Dst = &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}
	}
	if r.Gateway.IsValid() {
		nr.Gw = net.IP(r.Gateway.AsSlice())
	}
	if r.Src.IsValid() {
		nr.Src = net.IP(r.Src.AsSlice())
	}
	if r.Dev != "" {
		l, err := n.link(r.Dev)
		if err != nil {
			return nil, err
		}
		nr.LinkIndex = l.Attrs().Index
	}
	if r.Blackhole {
		nr.Type = unix.RTN_BLACKHOLE
	}
	if r.OnLink {
		nr.Flags |= int(netlink.FLAG_ONLINK)
	}
	for _, h := range r.Nexthops {
		nh := &netlink.NexthopInfo{Gw: net.IP(h.Gateway.AsSlice())}
		if h.Dev != "" {
			l, err := n.link(h.Dev)
			if err != nil {
				return nil, err
			}
			nh.LinkIndex = l.Attrs().Index
		}
		nr.MultiPath = append(nr.MultiPath, nh)
	}
	nr.Scope = netlink.Scope(r.Scope)
	nr.Protocol = netlink.RouteProtocol(r.Protocol)
	nr.Priority = r.Metric
	return nr, nil
}

// ReplaceRoute installs a route, replacing one to the same destination.
func (n *NetNS) ReplaceRoute(r Route) error {
	nr, err := n.toNetlinkRoute(r)
	if err != nil {
		return fmt.Errorf("route %s in %s: %w", r, n, err)
	}
	if err := n.nl.RouteReplace(nr); err != nil {
		return fmt.Errorf("replace route %s in %s: %w", r, n, err)
	}
	return nil
}

// DeleteRoute removes a route; a missing route is not an error.
func (n *NetNS) DeleteRoute(r Route) error {
	nr, err := n.toNetlinkRoute(r)
	if err != nil {
		return fmt.Errorf("route %s in %s: %w", r, n, err)
	}
	if err := n.nl.RouteDel(nr); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("delete route %s in %s: %w", r, n, err)
	}
	return nil
}

// Routes lists the IPv4 routes of the main table.
func (n *NetNS) Routes() ([]Route, error) {
	rs, err := n.nl.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("list routes in %s: %w", n, err)
	}
	names := map[int]string{}
	if ls, err := n.nl.LinkList(); err == nil {
		for _, l := range ls {
			names[l.Attrs().Index] = l.Attrs().Name
		}
	}
	out := make([]Route, 0, len(rs))
	for _, nr := range rs {
		r := Route{
			Dev: names[nr.LinkIndex], Blackhole: nr.Type == unix.RTN_BLACKHOLE,
			OnLink: nr.Flags&int(netlink.FLAG_ONLINK) != 0, Scope: uint8(nr.Scope), Protocol: int(nr.Protocol),
			Metric: nr.Priority,
		}
		if p, ok := ipNetToPrefix(nr.Dst); ok && p.Bits() > 0 {
			r.Dst = p
		}
		if a, ok := netip.AddrFromSlice(nr.Gw); ok {
			r.Gateway = a.Unmap()
		}
		if a, ok := netip.AddrFromSlice(nr.Src); ok {
			r.Src = a.Unmap()
		}
		for _, nh := range nr.MultiPath {
			h := Nexthop{Dev: names[nh.LinkIndex]}
			if a, ok := netip.AddrFromSlice(nh.Gw); ok {
				h.Gateway = a.Unmap()
			}
			r.Nexthops = append(r.Nexthops, h)
		}
		out = append(out, r)
	}
	return out, nil
}

// RouteGet reports the route the kernel would use to reach dst (`ip route
// get`): its gateway (invalid when dst is on-link), device and source.
func (n *NetNS) RouteGet(dst netip.Addr) (Route, error) {
	rs, err := n.nl.RouteGet(net.IP(dst.AsSlice()))
	if err != nil {
		return Route{}, fmt.Errorf("route get %s in %s: %w", dst, n, err)
	}
	if len(rs) == 0 {
		return Route{}, fmt.Errorf("route get %s in %s: %w", dst, n, ErrNotFound)
	}
	r := Route{Dst: netip.PrefixFrom(dst, dst.BitLen())}
	if l, err := n.nl.LinkByIndex(rs[0].LinkIndex); err == nil {
		r.Dev = l.Attrs().Name
	}
	if a, ok := netip.AddrFromSlice(rs[0].Gw); ok {
		r.Gateway = a.Unmap()
	}
	if a, ok := netip.AddrFromSlice(rs[0].Src); ok {
		r.Src = a.Unmap()
	}
	return r, nil
}
