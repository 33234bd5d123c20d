package bench

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/podnet"
)

// The datapath topology: one node and two routed pods on it, nothing else.
//
//	client pod 10.15.0.2/32 --eth0 ~ cli0-- node --srv0 ~ eth0-- server pod 10.15.0.3/32
//	                                         |
//	                      node IP 10.250.0.10/32 on lo (no uplink), pod block 10.15.0.0/24
//
// podnet programs the node as the agent would in routed mode (ip_forward,
// the block's blackhole, 169.254.1.1/32 dev lo) and the pods are wired as
// kdive-cni wires routed pods (see attachRouted). The service proxy under
// test runs in the node; the server pod listens on 8080 and the ClusterIP
// 10.111.255.1:80 leads to it. The node has no uplink and no default route,
// so the other services' endpoints (10.0.0.0/12, see GenerateDesired) are
// never contacted: the client only ever connects to the ClusterIP and to the
// server pod.
var (
	dpNodeIP      = netip.MustParseAddr("10.250.0.10")
	dpBlock       = netip.MustParsePrefix("10.15.0.0/24")
	dpClientIP    = netip.MustParseAddr("10.15.0.2")
	dpServerIP    = netip.MustParseAddr("10.15.0.3")
	dpServerPort  = uint16(8080)
	dpClusterIP   = netip.MustParseAddr("10.111.255.1")
	dpServicePort = uint16(80)
	dpClusterCIDR = netip.MustParsePrefix("10.0.0.0/12")
)

const dpNodeName = "bench-node"

type datapathTopo struct {
	set                  *nsSet
	node, client, server *kernel.NetNS
	srv                  *server
}

// newDatapathTopo builds the topology; on error it removes what it built.
func newDatapathTopo(ctx context.Context, onCreate func(string)) (_ *datapathTopo, err error) {
	t := &datapathTopo{set: newNSSet(onCreate)}
	defer func() {
		if err != nil {
			_ = t.set.Close()
		}
	}()
	for _, p := range []struct {
		ns   **kernel.NetNS
		role string
	}{{&t.node, "node"}, {&t.client, "client"}, {&t.server, "server"}} {
		if *p.ns, err = t.set.create(p.role); err != nil {
			return nil, err
		}
	}
	if err := t.node.AddAddr("lo", netip.PrefixFrom(dpNodeIP, 32)); err != nil {
		return nil, err
	}
	rec := podnet.New(podnet.Options{NetNS: t.node, Uplink: "lo",
		Network: model.PodNetwork{Interface: model.InterfaceRouted, Encap: model.EncapNone, EncapPolicy: model.EncapAlways}})
	st := podnet.State{Local: model.Node{Name: dpNodeName, IPs: []netip.Addr{dpNodeIP}, PodCIDR: dpBlock},
		Subnet: netip.PrefixFrom(dpNodeIP, 32), UplinkMTU: 1500}
	if err := rec.Sync(ctx, st); err != nil {
		return nil, fmt.Errorf("pod network of the bench node: %w", err)
	}
	if err := attachRouted(t.node, t.client, "cli0", dpClientIP, 1500); err != nil {
		return nil, err
	}
	if err := attachRouted(t.node, t.server, "srv0", dpServerIP, 1500); err != nil {
		return nil, err
	}
	if t.srv, err = startServer(t.server, netip.AddrPortFrom(dpServerIP, dpServerPort)); err != nil {
		return nil, err
	}
	t.set.onClose(t.srv.Close)
	return t, nil
}

func (t *datapathTopo) Close() error { return t.set.Close() }

func (t *datapathTopo) clusterAddr() string {
	return netip.AddrPortFrom(dpClusterIP, dpServicePort).String()
}

func (t *datapathTopo) directAddr() string {
	return netip.AddrPortFrom(dpServerIP, dpServerPort).String()
}
