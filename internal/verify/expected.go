package verify

import (
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/kdive/kdive/internal/lab"
	"github.com/kdive/kdive/internal/proxy"
	"github.com/kdive/kdive/internal/source/labstore"
)

// What each node's proxy must have programmed, computed from the lab's
// API objects the way the agent computes it (internal/agent/proxy.go
// syncProxy): the lab runs every agent with --cluster-cidr set to the
// lab's pod CIDR and no nodePortAddresses (NodePorts on the node's
// primary IP), without localhost NodePorts or masquerade-all; the node
// is its Node object (InternalIP, zone label). Services the proxy skips
// (headless, another proxy's) or rejects as invalid give no ports, as in
// the agent.

// proxyConfig is the proxy.Config lab agents run with.
func proxyConfig(p *lab.Plan) proxy.Config {
	return proxy.Config{ClusterCIDRs: []netip.Prefix{p.PodCIDR}}
}

// proxyNode is the proxy.Node an agent derives from its Node object.
func proxyNode(n *corev1.Node) proxy.Node {
	pn := proxy.Node{Name: n.Name, Zone: n.Labels[corev1.LabelTopologyZone]}
	for _, a := range n.Status.Addresses {
		if a.Type != corev1.NodeInternalIP {
			continue
		}
		if ip, err := netip.ParseAddr(a.Address); err == nil && ip.Is4() {
			pn.IPs = []netip.Addr{ip}
			break
		}
	}
	return pn
}

// desiredFor is the Desired snapshot of one node.
func desiredFor(cfg proxy.Config, node proxy.Node, snap *labstore.Snapshot) *proxy.Desired {
	d := &proxy.Desired{Node: node, Config: cfg, NodePortIPs: proxy.NodePortIPs(cfg, node)}
	for i := range snap.Services {
		svc := &snap.Services[i]
		var slices []*discoveryv1.EndpointSlice
		for j := range snap.EndpointSlices {
			sl := &snap.EndpointSlices[j]
			if sl.Namespace == svc.Namespace && sl.Labels[discoveryv1.LabelServiceName] == svc.Name {
				slices = append(slices, sl)
			}
		}
		ports, err := proxy.ServicePorts(svc, slices)
		if err != nil {
			continue // the agent leaves invalid services out too
		}
		for _, sp := range ports {
			d.Services = append(d.Services, proxy.Resolve(sp, node))
		}
	}
	return d
}

// expectedTables is, per node name, the load-balancing table its proxy
// must read back as.
func expectedTables(p *lab.Plan, snap *labstore.Snapshot) map[string]*proxy.LBTable {
	cfg := proxyConfig(p)
	out := map[string]*proxy.LBTable{}
	for i := range snap.Nodes {
		n := &snap.Nodes[i]
		out[n.Name] = proxy.ExpectedLB(p.Proxy.Mode, desiredFor(cfg, proxyNode(n), snap))
	}
	return out
}
