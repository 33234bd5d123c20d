package cni

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"golang.org/x/sys/unix"

	"github.com/kdive/kdive/internal/cni/ipam"
	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/model"
)

func (p *plugin) cmdAdd(args *skel.CmdArgs) error {
	conf, res, err := p.add(args)
	if err != nil {
		return cniError(opName("ADD", args), err)
	}
	if err := types.PrintResult(res, conf.CNIVersion); err != nil {
		return cniError(opName("ADD", args), coded(types.ErrIOFailure, fmt.Errorf("print result: %w", err)))
	}
	return nil
}

// attach is one ADD in progress.
type attach struct {
	conf      *NetConf
	a         ipam.Attachment
	host, pod *kernel.NetNS
	netnsPath string
	hostVeth  string
	ip        netip.Addr
	ports     []PortMapping
	hp        *hostPorts
	ctx       context.Context // bounds the hostPort work
}

// add attaches the pod. ADD is retry-safe: for an attachment that already
// holds an address it keeps that address, deletes the host-side veth a
// previous ADD left (which removes its pod end too) and builds everything
// afresh. An interface of that name in the pod that is not ours is an error
// and is left alone. The pod's hostPorts (runtimeConfig.portMappings) are
// programmed last, all or none. Nothing is left behind when ADD fails.
func (p *plugin) add(args *skel.CmdArgs) (*NetConf, *types100.Result, error) {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return nil, nil, err
	}
	ports, err := conf.PortMappings()
	if err != nil {
		return nil, nil, err
	}
	a, err := attachmentOf(args)
	if err != nil {
		return nil, nil, err
	}
	host, err := p.openHost()
	if err != nil {
		return nil, nil, err
	}
	defer host.Close()
	pod, err := openPodNS(args.Netns, host)
	if err != nil {
		return nil, nil, err
	}
	defer pod.Close()
	if conf.Mode == model.InterfaceRouted {
		if err := checkGatewayRoute(host); err != nil {
			return nil, nil, err
		}
	}
	store, err := storeOf(conf)
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := hostPortContext()
	defer cancel()
	at := &attach{conf: conf, a: a, host: host, pod: pod, netnsPath: args.Netns, hostVeth: hostVethName(conf, a),
		ports: ports, hp: newHostPorts(host, conf.DataDir), ctx: ctx}
	if at.ip, err = store.Allocate(a); err != nil {
		return nil, nil, ipamError(err)
	}
	res, err := at.build()
	if err != nil {
		_ = deleteOwnVeth(host, at.hostVeth, a)
		if conf.Mode == model.InterfaceBridge {
			if gerr := antiSpoof(host).Forget(at.hostVeth); gerr != nil {
				err = errors.Join(err, fmt.Errorf("undo: %w", gerr))
			}
		}
		// The address stays allocated while hostPorts may lead to it.
		if herr := at.hp.remove(ctx, a, at.ip); herr != nil {
			return nil, nil, errors.Join(err, fmt.Errorf("undo: %w", herr))
		}
		if _, rerr := store.Release(a); rerr != nil {
			err = errors.Join(err, fmt.Errorf("undo: %w", rerr))
		}
		return nil, nil, err
	}
	return conf, res, nil
}

// checkGatewayRoute fails when the node has no route covering 169.254.1.1:
// the kernel answers a proxy ARP request only for addresses it can route
// (normally through the default route), so without one no pod could reach
// its gateway, silently (Calico has the same limitation, issue #3270).
func checkGatewayRoute(host *kernel.NetNS) error {
	r, err := host.RouteTo(RoutedGateway)
	if err == nil && !r.Blackhole && r.Dev != "" {
		return nil
	}
	why := "it has none"
	if err == nil {
		why = "it routes it as " + r.String()
	}
	return coded(types.ErrPluginNotAvailable, fmt.Errorf(
		"routed mode needs a node route covering %s (normally the default route) so the pod-side ARP for its gateway is answered by proxy ARP; %s",
		RoutedGateway, why))
}

// build creates the interfaces and routes of the attachment and returns the
// CNI result.
func (at *attach) build() (*types100.Result, error) {
	if err := at.clearLeftovers(); err != nil {
		return nil, err
	}
	var gw netip.Addr
	ifaces := []*types100.Interface{}
	switch at.conf.Mode {
	case model.InterfaceBridge:
		br, err := at.plugBridge()
		if err != nil {
			return nil, err
		}
		ifaces = append(ifaces, &types100.Interface{Name: br.Name, Mac: br.MAC.String()})
		gw = ipam.Gateway(at.conf.Block)
	default:
		if err := at.plugRouted(); err != nil {
			return nil, err
		}
		gw = RoutedGateway
	}
	hl, err := at.host.LinkInfo(at.hostVeth)
	if err != nil {
		return nil, err
	}
	pl, err := at.pod.LinkInfo(at.a.IfName)
	if err != nil {
		return nil, err
	}
	ifaces = append(ifaces,
		&types100.Interface{Name: hl.Name, Mac: hl.MAC.String(), Mtu: hl.MTU},
		&types100.Interface{Name: pl.Name, Mac: pl.MAC.String(), Mtu: pl.MTU, Sandbox: at.netnsPath})
	podIdx := len(ifaces) - 1
	if at.conf.Mode == model.InterfaceBridge {
		if err := at.guardPort(pl); err != nil {
			return nil, err
		}
	}
	if err := at.hp.add(at.ctx, at.a, at.ip, at.ports); err != nil {
		return nil, err
	}
	return &types100.Result{
		CNIVersion: types100.ImplementedSpecVersion,
		Interfaces: ifaces,
		IPs: []*types100.IPConfig{{
			Interface: types100.Int(podIdx),
			Address:   *prefixIPNet(at.podPrefix()),
			Gateway:   net.IP(gw.AsSlice()),
		}},
		Routes: []*types.Route{{Dst: net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, GW: net.IP(gw.AsSlice())}},
		DNS:    at.conf.DNS,
	}, nil
}

// podPrefix is the pod's address with its prefix length: /32 in routed
// mode, the block's in bridge mode.
func (at *attach) podPrefix() netip.Prefix {
	if at.conf.Mode == model.InterfaceBridge {
		return netip.PrefixFrom(at.ip, at.conf.Block.Bits())
	}
	return netip.PrefixFrom(at.ip, 32)
}

// clearLeftovers removes what an earlier ADD of the same attachment left
// and refuses to touch a pod interface that is not ours.
func (at *attach) clearLeftovers() error {
	if err := deleteOwnVeth(at.host, at.hostVeth, at.a); err != nil {
		return fmt.Errorf("remove the veth an earlier ADD left: %w", err)
	}
	if err := at.hp.remove(at.ctx, at.a, at.ip); err != nil {
		return fmt.Errorf("remove the hostPorts an earlier ADD left: %w", err)
	}
	if at.conf.Mode == model.InterfaceBridge {
		if err := antiSpoof(at.host).Forget(at.hostVeth); err != nil {
			return fmt.Errorf("remove the port guard an earlier ADD left: %w", err)
		}
	}
	if _, err := at.pod.LinkInfo(at.a.IfName); err == nil {
		return fmt.Errorf("netns %s already has an interface %s (not created by kdive-cni); refusing to replace it", at.netnsPath, at.a.IfName)
	} else if !errors.Is(err, kernel.ErrNotFound) {
		return err
	}
	return nil
}

// addVeth creates the pair: the host end (MTU, our alias) in the node, the
// pod end CNI_IFNAME in the pod.
func (at *attach) addVeth() error {
	mtu := at.conf.MTU
	return at.host.AddVeth(at.hostVeth, kernel.LinkAttrs{MTU: mtu, Alias: vethAlias(at.a)}, at.pod, at.a.IfName, kernel.LinkAttrs{MTU: mtu})
}

// plugRouted wires the Calico way: pod address /32, a link-scope route to
// 169.254.1.1 and the default route through it; on the host proxy ARP
// answers for 169.254.1.1 and a /32 route leads back to the pod. Strict
// reverse path filtering on the host end drops whatever the pod sends from
// an address other than its own (the kernel applies the larger of
// conf.all and the device's value, so a node with all=2 gets loose mode).
func (at *attach) plugRouted() error {
	if err := at.addVeth(); err != nil {
		return err
	}
	hv := at.hostVeth
	for _, s := range [][2]string{
		{"net.ipv4.conf." + hv + ".proxy_arp", "1"},
		{"net.ipv4.neigh." + hv + ".proxy_delay", "0"},
		{"net.ipv4.conf." + hv + ".forwarding", "1"},
		{"net.ipv4.conf." + hv + ".rp_filter", "1"},
	} {
		if err := at.host.Sysctl(s[0], s[1]); err != nil {
			return err
		}
	}
	if err := at.configurePod(at.podPrefix(), []kernel.Route{
		{Dst: netip.PrefixFrom(RoutedGateway, 32), Dev: at.a.IfName, Scope: unix.RT_SCOPE_LINK},
		{Gateway: RoutedGateway, Dev: at.a.IfName},
	}); err != nil {
		return err
	}
	if err := at.host.LinkUp(hv); err != nil {
		return err
	}
	return at.host.ReplaceRoute(kernel.Route{
		Dst: netip.PrefixFrom(at.ip, 32), Dev: hv, Scope: unix.RT_SCOPE_LINK, Protocol: kernel.RouteProtocolCNI,
	})
}

// plugBridge wires the kube-router way: the bridge (created on first use,
// the block's first address on it), the host end as a hairpin port, the pod
// address in the block with the bridge as its gateway.
func (at *attach) plugBridge() (kernel.Link, error) {
	br := at.conf.Bridge
	gw := netip.PrefixFrom(ipam.Gateway(at.conf.Block), at.conf.Block.Bits())
	if err := at.host.EnsureBridge(br, kernel.LinkAttrs{MTU: at.conf.MTU, Alias: "kdive-cni: pod bridge"}, gw); err != nil {
		return kernel.Link{}, err
	}
	if err := at.addVeth(); err != nil {
		return kernel.Link{}, err
	}
	if err := at.host.SetMaster(at.hostVeth, br); err != nil {
		return kernel.Link{}, err
	}
	if err := at.host.SetHairpin(at.hostVeth, true); err != nil {
		return kernel.Link{}, err
	}
	if err := at.host.LinkUp(at.hostVeth); err != nil {
		return kernel.Link{}, err
	}
	if err := at.configurePod(at.podPrefix(), []kernel.Route{{Gateway: gw.Addr(), Dev: at.a.IfName}}); err != nil {
		return kernel.Link{}, err
	}
	return at.host.LinkInfo(br)
}

// configurePod addresses the pod's interface, sets it up and adds routes.
func (at *attach) configurePod(addr netip.Prefix, routes []kernel.Route) error {
	ifn := at.a.IfName
	if err := at.pod.AddAddr(ifn, addr); err != nil {
		return err
	}
	if err := at.pod.LinkUp(ifn); err != nil {
		return err
	}
	for _, r := range routes {
		if err := at.pod.ReplaceRoute(r); err != nil {
			return err
		}
	}
	return nil
}

func prefixIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
