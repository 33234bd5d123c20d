package cni

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"golang.org/x/sys/unix"

	"github.com/kdive/kdive/internal/cni/ipam"
	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/model"
)

func (p *plugin) cmdCheck(args *skel.CmdArgs) error {
	if err := p.check(args); err != nil {
		return cniError(opName("CHECK", args), err)
	}
	return nil
}

// check verifies that what ADD built (as its prevResult describes) is still
// there: the address in IPAM, the pod's interface (up, MTU, MAC, address)
// and routes, the host-side veth and, per mode, the /32 route and proxy ARP
// or the bridge port and its source guard, and the pod's hostPorts (runtimeConfig.portMappings:
// their map entries, the hairpin entry, the table's chains, the state file
// DEL needs). The error lists everything missing.
func (p *plugin) check(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	a, err := attachmentOf(args)
	if err != nil {
		return err
	}
	prev, err := prevResult(conf, true)
	if err != nil {
		return err
	}
	host, err := p.openHost()
	if err != nil {
		return err
	}
	defer host.Close()
	pod, err := openPodNS(args.Netns, host)
	if err != nil {
		return err
	}
	defer pod.Close()

	c := &checker{conf: conf, a: a, host: host, pod: pod, netns: args.Netns}
	ip, podIface, hostIface := c.fromPrev(prev)
	if !ip.IsValid() {
		return c.err()
	}
	c.ipam(ip)
	c.podSide(ip, podIface)
	c.hostSide(ip, hostIface)
	c.hostPorts(ip)
	return c.err()
}

// hostPorts checks the pod's hostPorts; an invalid portMappings list is a
// problem too.
func (c *checker) hostPorts(ip netip.Addr) {
	ports, err := c.conf.PortMappings()
	if err != nil {
		c.missing("%v", err)
		return
	}
	ctx, cancel := hostPortContext()
	defer cancel()
	c.problems = append(c.problems, newHostPorts(c.host, c.conf.DataDir).check(ctx, c.a, ip, ports)...)
}

// checker collects what CHECK finds missing.
type checker struct {
	conf      *NetConf
	a         ipam.Attachment
	host, pod *kernel.NetNS
	netns     string
	problems  []string
}

func (c *checker) missing(format string, args ...any) {
	c.problems = append(c.problems, fmt.Sprintf(format, args...))
}

func (c *checker) err() error {
	if len(c.problems) == 0 {
		return nil
	}
	return errors.New(strings.Join(c.problems, "; "))
}

// fromPrev finds the pod's address and the two ends of its veth in the
// prevResult.
func (c *checker) fromPrev(prev *types100.Result) (ip netip.Addr, pod, host *types100.Interface) {
	podIdx := -1
	for i, iface := range prev.Interfaces {
		switch {
		case iface == nil:
		case iface.Sandbox != "" && iface.Name == c.a.IfName:
			pod, podIdx = iface, i
		case iface.Sandbox == "" && iface.Name != c.conf.Bridge:
			host = iface
		}
	}
	if pod == nil {
		c.missing("prevResult lists no interface %s in a sandbox", c.a.IfName)
		return netip.Addr{}, nil, nil
	}
	for _, ipc := range prev.IPs {
		if ipc != nil && ipc.Interface != nil && *ipc.Interface == podIdx {
			if addr, ok := netip.AddrFromSlice(ipc.Address.IP); ok {
				return addr.Unmap(), pod, host
			}
		}
	}
	c.missing("prevResult has no address for %s", c.a.IfName)
	return netip.Addr{}, pod, host
}

func (c *checker) ipam(ip netip.Addr) {
	store, err := storeOf(c.conf)
	if err != nil {
		c.missing("%v", err)
		return
	}
	got, ok, err := store.Lookup(c.a)
	switch {
	case err != nil:
		c.missing("%v", err)
	case !ok:
		c.missing("IPAM (%s) holds no address for %s", c.conf.DataDir, c.a)
	case got != ip:
		c.missing("IPAM holds %s for %s, prevResult says %s", got, c.a, ip)
	}
}

func (c *checker) podSide(ip netip.Addr, want *types100.Interface) {
	ifn := c.a.IfName
	l, err := c.pod.LinkInfo(ifn)
	if err != nil {
		c.missing("pod netns %s: no interface %s", c.netns, ifn)
		return
	}
	c.link("pod netns "+c.netns, l)
	if want.Mac != "" && !strings.EqualFold(want.Mac, l.MAC.String()) {
		c.missing("pod interface %s has MAC %s, prevResult says %s", ifn, l.MAC, want.Mac)
	}
	addr := netip.PrefixFrom(ip, 32)
	gw := RoutedGateway
	wantRoutes := []kernel.Route{
		{Dst: netip.PrefixFrom(RoutedGateway, 32), Dev: ifn, Scope: unix.RT_SCOPE_LINK},
		{Gateway: RoutedGateway, Dev: ifn},
	}
	if c.conf.Mode == model.InterfaceBridge {
		addr = netip.PrefixFrom(ip, c.conf.Block.Bits())
		gw = ipam.Gateway(c.conf.Block)
		wantRoutes = []kernel.Route{{Gateway: gw, Dev: ifn}}
	}
	if !slices.Contains(l.Addrs, addr) {
		c.missing("pod interface %s has no address %s", ifn, addr)
	}
	c.routes("pod netns "+c.netns, c.pod, wantRoutes)
}

func (c *checker) hostSide(ip netip.Addr, want *types100.Interface) {
	name := hostVethName(c.conf, c.a)
	if want != nil {
		name = want.Name
	}
	l, err := c.host.LinkInfo(name)
	if err != nil {
		c.missing("node: no host-side veth %s", name)
		return
	}
	c.link("node", l)
	c.reach(ip, name)
	if c.conf.Mode == model.InterfaceBridge {
		c.bridgePort(l)
		c.guard(ip, name)
		return
	}
	if v, err := c.host.ReadSysctl("net.ipv4.conf." + name + ".proxy_arp"); err != nil || v != "1" {
		c.missing("node: proxy ARP is off on %s", name)
	}
	c.routes("node", c.host, []kernel.Route{{
		Dst: netip.PrefixFrom(ip, 32), Dev: name, Scope: unix.RT_SCOPE_LINK, Protocol: kernel.RouteProtocolCNI,
	}})
}

// reach checks that the node sends packets for the pod where they belong
// (its veth, or the bridge): nothing shadows the pod's route, such as a
// blackhole route for the block with a lower metric than the bridge's
// connected route.
func (c *checker) reach(ip netip.Addr, hostVeth string) {
	want := hostVeth
	if c.conf.Mode == model.InterfaceBridge {
		want = c.conf.Bridge
	}
	r, err := c.host.RouteTo(ip)
	switch {
	case err != nil:
		c.missing("node: no route to the pod's %s: %v", ip, err)
	case r.Blackhole || r.Dev != want:
		c.missing("node: routes the pod's %s as %s, not through %s (does a route of the block shadow it?)", ip, r, want)
	}
}

func (c *checker) bridgePort(l kernel.Link) {
	br, err := c.host.LinkInfo(c.conf.Bridge)
	if err != nil {
		c.missing("node: no bridge %s", c.conf.Bridge)
		return
	}
	if l.Master != br.Index {
		c.missing("node: %s is not a port of %s", l.Name, br.Name)
	}
	gw := netip.PrefixFrom(ipam.Gateway(c.conf.Block), c.conf.Block.Bits())
	if !slices.Contains(br.Addrs, gw) {
		c.missing("node: bridge %s has no address %s", br.Name, gw)
	}
	if on, err := c.host.Hairpin(l.Name); err != nil || !on {
		c.missing("node: hairpin mode is off on %s", l.Name)
	}
}

// link checks what both ends share: up, and the configured MTU.
func (c *checker) link(where string, l kernel.Link) {
	if !l.Up {
		c.missing("%s: %s is down", where, l.Name)
	}
	if l.MTU != c.conf.MTU {
		c.missing("%s: %s has MTU %d, config says %d", where, l.Name, l.MTU, c.conf.MTU)
	}
}

// routes checks that each wanted route is in the namespace (destination,
// gateway, device, and scope and protocol where wanted).
func (c *checker) routes(where string, ns *kernel.NetNS, want []kernel.Route) {
	have, err := ns.Routes()
	if err != nil {
		c.missing("%s: %v", where, err)
		return
	}
	for _, w := range want {
		if !slices.ContainsFunc(have, func(r kernel.Route) bool {
			return r.Dst == w.Dst && r.Gateway == w.Gateway && r.Dev == w.Dev &&
				(w.Scope == 0 || r.Scope == w.Scope) && (w.Protocol == 0 || r.Protocol == w.Protocol)
		}) {
			c.missing("%s: no route %s", where, w)
		}
	}
}
