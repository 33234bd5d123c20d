package verify

import (
	"github.com/kdive/kdive/internal/model"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/kdive/kdive/internal/agent"
	"github.com/kdive/kdive/internal/lab"
	"github.com/kdive/kdive/internal/proxy"
	"github.com/kdive/kdive/internal/source"
	"github.com/kdive/kdive/internal/source/labstore"
)

// What each node's proxy must have programmed, computed from the lab's
// API objects with the agent's own functions (source.Node,
// agent.ProxyInputs, proxy.ServicePorts, proxy.Resolve). Services the
// proxy skips (headless, another proxy's) or rejects as invalid give no
// ports, as in the agent.

// proxyInputs are the proxy.Config and model.Node a lab agent programs
// node n with: the lab runs every agent with --cluster-cidr set to the
// lab's pod CIDR and the rest of the proxy configuration at its defaults,
// and agent.ProxyInputs is how an agent turns that and its Node into them.
func proxyInputs(p *lab.Plan, n *corev1.Node) (proxy.Config, model.Node) {
	local, _ := source.Node(n) // the proxy needs no pod CIDR
	return agent.ProxyInputs(agent.ProxyConfig{Mode: p.Proxy.Mode, ClusterCIDR: p.PodCIDR.String()}, local)
}

// desiredFor is the Desired snapshot of one node.
func desiredFor(cfg proxy.Config, node model.Node, snap *labstore.Snapshot) *proxy.Desired {
	d := proxy.NewDesired(cfg, node)
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
	out := map[string]*proxy.LBTable{}
	for i := range snap.Nodes {
		n := &snap.Nodes[i]
		cfg, node := proxyInputs(p, n)
		out[n.Name] = proxy.ExpectedLB(p.Proxy.Mode, desiredFor(cfg, node, snap))
	}
	return out
}
