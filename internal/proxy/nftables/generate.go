package nftables

import (
	"fmt"
	"net/netip"

	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy"
)

// Addresses of generated states: cluster IPs from 10.96.0.0/12, pods from
// the cluster CIDR 10.0.0.0/12 spread over 100 nodes, this node (node-0)
// at 10.250.0.10.
var (
	GeneratedNodeIP      = netip.MustParseAddr("10.250.0.10")
	generatedClusterCIDR = netip.MustParsePrefix("10.0.0.0/12")
	generatedServiceBase = netip.MustParseAddr("10.96.0.0")
	generatedNodes       = 100
)

// GenerateDesired is a node's Desired with `services` ClusterIP services of
// one TCP port each (bench/svc-NNNNNN:http, port 80), each with `endpoints`
// ready endpoints (port 8080) spread round-robin over 100 nodes, so about
// 1% are on this node. It is the state `kdive bench sync` and the
// benchmarks program; up to 1,000,000 services and pods.
func GenerateDesired(services, endpoints int) *proxy.Desired {
	node := model.Node{Name: "node-0", IPs: []netip.Addr{GeneratedNodeIP}}
	cfg := proxy.Config{ClusterCIDRs: []netip.Prefix{generatedClusterCIDR}}
	d := proxy.NewDesired(cfg, node)
	for i := range services {
		d.Services = append(d.Services, proxy.Resolve(GeneratedPort(i, endpoints), node))
	}
	return d
}

// GeneratedPort is service i of GenerateDesired.
func GeneratedPort(i, endpoints int) model.ServicePort {
	sp := model.ServicePort{
		Name:       model.ServicePortName{Namespace: "bench", Name: fmt.Sprintf("svc-%06d", i), Port: "http", Protocol: model.ProtocolTCP},
		ClusterIPs: []netip.Addr{nthAddr(generatedServiceBase, i+1)},
		Port:       80,
	}
	for j := range endpoints {
		n := i*endpoints + j
		sp.Endpoints = append(sp.Endpoints, model.Endpoint{
			IP: nthAddr(generatedClusterCIDR.Addr(), 1+n), Port: 8080,
			NodeName: fmt.Sprintf("node-%d", n%generatedNodes), Ready: true, Serving: true,
		})
	}
	return sp
}

// nthAddr is base + n (IPv4).
func nthAddr(base netip.Addr, n int) netip.Addr {
	b := base.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v += uint32(n)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
