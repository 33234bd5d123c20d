package bench

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/podnet"
)

// The encap topology: two nodes on one L2 segment (a veth pair between
// their eth0s) with one routed pod each; podnet programs both nodes as
// their agents would, with the mode under test and policy always.
//
//	pod-1 10.0.1.2/32 ~ node-1 eth0 192.0.2.1/24 ~~~ 192.0.2.2/24 eth0 node-2 ~ pod-2 10.0.2.2/32
//	        pod block 10.0.1.0/24                          pod block 10.0.2.0/24
//
// The baseline is a bare veth between two namespaces (10.99.0.1/24 and
// 10.99.0.2/24, MTU 1500): no forwarding, no routing between hops, no
// encapsulation. The server runs in pod-2 (in the baseline's second
// namespace), the client in pod-1 (the first).
var (
	encNodes = []model.Node{
		{Name: "node-1", IPs: []netip.Addr{netip.MustParseAddr("192.0.2.1")}, PodCIDR: netip.MustParsePrefix("10.0.1.0/24")},
		{Name: "node-2", IPs: []netip.Addr{netip.MustParseAddr("192.0.2.2")}, PodCIDR: netip.MustParsePrefix("10.0.2.0/24")},
	}
	encSubnetBits = 24
	encBareA      = netip.MustParsePrefix("10.99.0.1/24")
	encBareB      = netip.MustParsePrefix("10.99.0.2/24")
	encPort       = uint16(8080)
	encUplinkMTU  = 1500
)

// encPodIP is the one pod of a node: the block's second address.
func encPodIP(n model.Node) netip.Addr { return n.PodCIDR.Addr().Next().Next() }

type encapTopo struct {
	set    *nsSet
	client *kernel.NetNS
	srv    *server
	addr   string // the server's address:port
	podMTU int
}

func (t *encapTopo) Close() error { return t.set.Close() }

// newBareTopo is the baseline: two namespaces joined by a veth.
func newBareTopo(onCreate func(string)) (_ *encapTopo, err error) {
	t := &encapTopo{set: newNSSet(onCreate), podMTU: encUplinkMTU}
	defer func() {
		if err != nil {
			_ = t.set.Close()
		}
	}()
	a, err := t.set.create("a")
	if err != nil {
		return nil, err
	}
	b, err := t.set.create("b")
	if err != nil {
		return nil, err
	}
	if err := a.AddVeth("eth0", kernel.LinkAttrs{MTU: encUplinkMTU}, b, "eth0", kernel.LinkAttrs{MTU: encUplinkMTU}); err != nil {
		return nil, err
	}
	for ns, p := range map[*kernel.NetNS]netip.Prefix{a: encBareA, b: encBareB} {
		if err := ns.AddAddr("eth0", p); err != nil {
			return nil, err
		}
		if err := ns.LinkUp("eth0"); err != nil {
			return nil, err
		}
	}
	if err := t.serve(a, b, encBareB.Addr()); err != nil {
		return nil, err
	}
	return t, nil
}

// newEncapTopo is two nodes programmed by podnet with encap mode.
func newEncapTopo(ctx context.Context, mode model.Encap, onCreate func(string)) (_ *encapTopo, err error) {
	nw := model.PodNetwork{Interface: model.InterfaceRouted, Encap: mode, EncapPolicy: model.EncapAlways}
	t := &encapTopo{set: newNSSet(onCreate), podMTU: nw.PodMTU(encUplinkMTU)}
	defer func() {
		if err != nil {
			_ = t.set.Close()
		}
	}()
	var nodes, pods [2]*kernel.NetNS
	for i := range nodes {
		if nodes[i], err = t.set.create(fmt.Sprintf("node%d", i+1)); err != nil {
			return nil, err
		}
		if pods[i], err = t.set.create(fmt.Sprintf("pod%d", i+1)); err != nil {
			return nil, err
		}
	}
	if err := nodes[0].AddVeth("eth0", kernel.LinkAttrs{MTU: encUplinkMTU}, nodes[1], "eth0", kernel.LinkAttrs{MTU: encUplinkMTU}); err != nil {
		return nil, err
	}
	for i, n := range encNodes {
		ns := nodes[i]
		if err := ns.AddAddr("eth0", netip.PrefixFrom(n.IP(), encSubnetBits)); err != nil {
			return nil, err
		}
		if err := ns.LinkUp("eth0"); err != nil {
			return nil, err
		}
		rec := podnet.New(podnet.Options{NetNS: ns, Network: nw, Uplink: "eth0"})
		if err := rec.Sync(ctx, podnet.State{Local: n, Peers: encNodes}); err != nil {
			return nil, fmt.Errorf("pod network of %s (%s): %w", n.Name, mode, err)
		}
		if err := attachRouted(ns, pods[i], "pod0", encPodIP(n), t.podMTU); err != nil {
			return nil, err
		}
	}
	if err := t.serve(pods[0], pods[1], encPodIP(encNodes[1])); err != nil {
		return nil, err
	}
	return t, nil
}

// serve starts the server in srvNS on ip and makes client the client.
func (t *encapTopo) serve(client, srvNS *kernel.NetNS, ip netip.Addr) error {
	a := netip.AddrPortFrom(ip, encPort)
	srv, err := startServer(srvNS, a)
	if err != nil {
		return err
	}
	t.set.onClose(srv.Close)
	t.client, t.srv, t.addr = client, srv, a.String()
	return nil
}
