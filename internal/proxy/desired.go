package proxy

import (
	"net/netip"
	"slices"

	"github.com/kdive/kdive/internal/model"
)

// Node is the node the proxy runs on, as the backends need it.
// Config are the proxy settings every backend honours.
type Config struct {
	// ClusterCIDRs are the pod network's ranges: traffic to a cluster IP
	// from outside them is masqueraded (kube-proxy's --cluster-cidr local
	// traffic detector).
	ClusterCIDRs []netip.Prefix
	// NodePortAddresses restricts the addresses NodePorts answer on; empty
	// means the node's primary IP (kube-proxy's "primary" default).
	NodePortAddresses []netip.Prefix
	// LocalhostNodePorts also opens NodePorts on 127.0.0.1.
	LocalhostNodePorts bool
	// MasqueradeAll masquerades all traffic to cluster IPs.
	MasqueradeAll bool
}

// Desired is the snapshot a backend renders: everything about this node's
// services, with endpoints already chosen by traffic policy and topology.
// Backends render it and apply the difference; they make no policy
// decisions of their own.
type Desired struct {
	Node   model.Node
	Config Config
	// NodePortIPs are the addresses NodePorts answer on (from
	// Config.NodePortAddresses and the node's IPs, plus 127.0.0.1 with
	// LocalhostNodePorts).
	NodePortIPs []netip.Addr
	// Services, in model.ServicePortName.Compare order (namespace, name,
	// port name, protocol), as the tracker makes them; a Desired built by
	// hand keeps that order too (backends look ports up by name).
	Services []*Port
	// Changed names the ports that changed since the previous snapshot
	// (added, changed or removed); the tracker is the one that knows, and
	// backends trust it. nil means "unknown: any port may have changed"
	// (a snapshot built by hand, or the node or the settings changed).
	Changed map[model.ServicePortName]bool
	// Resync asks the backend to look at the kernel's copy and repair what
	// someone else changed (the agent's periodic resync).
	Resync bool
}

// Full says the backend must not trust its memory of the kernel: on a
// resync, or when Changed is unknown. A full Sync compares the kernel's
// copy with what it should hold and repairs it.
func (d *Desired) Full() bool { return d.Resync || d.Changed == nil }

// NewDesired is an empty Desired for node under cfg, its NodePortIPs
// computed (NodePortIPs).
func NewDesired(cfg Config, node model.Node) *Desired {
	return &Desired{Node: node, Config: cfg, NodePortIPs: NodePortIPs(cfg, node)}
}

// Port is a service port with the endpoints each kind of traffic uses.
type Port struct {
	model.ServicePort
	// Cluster are the endpoints for traffic under the Cluster policy:
	// ready ones (filtered by topology hints when they apply), else the
	// serving-terminating ones. Empty when no traffic uses them.
	Cluster []model.Endpoint
	// Local are this node's endpoints for traffic under the Local policy:
	// ready ones, else serving-terminating ones.
	Local []model.Endpoint
	// HasEndpoints says the service has some usable endpoint anywhere:
	// when the endpoints a packet may use are empty, it is REJECTed if
	// HasEndpoints is false (nothing to talk to), DROPped otherwise (there
	// are endpoints, but not for this traffic).
	HasEndpoints bool
}

// InternalEndpoints are the endpoints for traffic to cluster IPs.
func (p *Port) InternalEndpoints() []model.Endpoint {
	if p.InternalPolicyLocal {
		return p.Local
	}
	return p.Cluster
}

// ExternalEndpoints are the endpoints for traffic to NodePorts, external
// IPs and LoadBalancer IPs from outside the node and its pods. (Under the
// Local policy, traffic from this node or its pods to those addresses is
// short-circuited to the cluster endpoints, as kube-proxy does.)
func (p *Port) ExternalEndpoints() []model.Endpoint {
	if p.ExternalPolicyLocal {
		return p.Local
	}
	return p.Cluster
}

// ExternallyAccessible says the port has addresses outside the cluster
// network: a NodePort, external IPs or LoadBalancer IPs.
func (p *Port) ExternallyAccessible() bool {
	return p.NodePort != 0 || len(p.ExternalIPs) > 0 || len(p.LoadBalancerIPs) > 0
}

// usesCluster and usesLocal say which endpoint sets some traffic uses.
// An externally accessible port always needs its cluster endpoints, even
// under externalTrafficPolicy Local: this node's pods and the node itself
// are short-circuited to them (upstream's UsesClusterEndpoints).
func (p *Port) usesCluster() bool {
	return !p.InternalPolicyLocal || p.ExternallyAccessible()
}

func (p *Port) usesLocal() bool {
	return p.InternalPolicyLocal || (p.ExternallyAccessible() && p.ExternalPolicyLocal)
}

// Resolve chooses a port's endpoints for this node, as upstream
// kube-proxy's CategorizeEndpoints does: cluster endpoints are the ready
// ones (only those hinted for this node, or this node's zone, when the
// hints apply: topology), falling back to serving-terminating ones when
// none is ready; local endpoints are this node's ready ones, else its
// serving-terminating ones.
func Resolve(sp model.ServicePort, node model.Node) *Port {
	p := &Port{ServicePort: sp}
	eps := sp.Endpoints
	if p.usesCluster() {
		inZone := topology(sp, node)
		p.Cluster = filter(eps, func(e model.Endpoint) bool { return e.Ready && inZone(e) })
		if len(p.Cluster) == 0 {
			p.Cluster = filter(eps, func(e model.Endpoint) bool { return e.Serving && e.Terminating && inZone(e) })
		}
		p.HasEndpoints = len(p.Cluster) > 0
	}
	if !p.usesLocal() {
		return p
	}
	var localReady, localTerminating bool
	for _, e := range eps {
		switch {
		case e.Ready:
			p.HasEndpoints = true
			localReady = localReady || e.NodeName == node.Name
		case e.Serving && e.Terminating:
			p.HasEndpoints = true
			localTerminating = localTerminating || e.NodeName == node.Name
		}
	}
	switch {
	case localReady:
		p.Local = filter(eps, func(e model.Endpoint) bool { return e.NodeName == node.Name && e.Ready })
	case localTerminating:
		p.Local = filter(eps, func(e model.Endpoint) bool {
			return e.NodeName == node.Name && e.Serving && e.Terminating
		})
	}
	return p
}

// topology says which endpoints this node may use by their hints, as
// upstream's topologyModeFromHints: the EndpointSlice controller hints
// endpoints only for a Service that asks (trafficDistribution
// PreferSameNode, PreferSameZone or PreferClose, or the topology-mode
// annotation), so the hints alone decide. When every ready endpoint has
// node hints and one is for this node, those for this node (PreferSameNode);
// else when every ready endpoint has zone hints and one is for this
// node's zone, those for the zone; else all (rather than black-holing the
// node or zone).
func topology(sp model.ServicePort, node model.Node) func(model.Endpoint) bool {
	allNode, forNode, allZone, forZone := true, false, true, false
	for _, e := range sp.Endpoints {
		if !e.Ready {
			continue
		}
		allNode = allNode && len(e.NodeHints) > 0
		forNode = forNode || slices.Contains(e.NodeHints, node.Name)
		allZone = allZone && len(e.ZoneHints) > 0
		forZone = forZone || (node.Zone != "" && slices.Contains(e.ZoneHints, node.Zone))
	}
	switch {
	case allNode && forNode:
		return func(e model.Endpoint) bool { return slices.Contains(e.NodeHints, node.Name) }
	case allZone && forZone:
		return func(e model.Endpoint) bool { return slices.Contains(e.ZoneHints, node.Zone) }
	}
	return func(model.Endpoint) bool { return true }
}

func filter(eps []model.Endpoint, keep func(model.Endpoint) bool) []model.Endpoint {
	var out []model.Endpoint
	for _, e := range eps {
		if keep(e) {
			out = append(out, e)
		}
	}
	return out
}

// NodePortIPs resolves where NodePorts answer on a node.
func NodePortIPs(cfg Config, node model.Node) []netip.Addr {
	out := nodePortNodeIPs(cfg, node)
	if cfg.LocalhostNodePorts {
		out = append(out, netip.MustParseAddr("127.0.0.1"))
	}
	return out
}

// nodePortNodeIPs are the node's addresses NodePorts answer on:
// Config.NodePortAddresses matched against the node's IPs, or its
// primary IP without them.
func nodePortNodeIPs(cfg Config, node model.Node) []netip.Addr {
	var out []netip.Addr
	if len(cfg.NodePortAddresses) == 0 {
		if len(node.IPs) > 0 {
			out = append(out, node.IPs[0])
		}
		return out
	}
	for _, ip := range node.IPs {
		for _, p := range cfg.NodePortAddresses {
			if p.Contains(ip) && !slices.Contains(out, ip) {
				out = append(out, ip)
			}
		}
	}
	return out
}

// HealthCheckIPs are the addresses the health check node ports of
// externalTrafficPolicy: Local services listen on, as kube-proxy binds
// them: with Config.NodePortAddresses, the node IPs within them (none if
// none match, as NodePorts); without them, or when one of them matches
// every address (0.0.0.0/0, ::/0), the unspecified address, i.e. every
// address of the node (load balancers probe whichever node address they
// know). LocalhostNodePorts does not add 127.0.0.1: a health check comes
// from a load balancer, never from the node itself.
//
// Upstream's nftables mode differs in one case: it defaults
// nodePortAddresses to the primary IP and so binds health check ports
// there; its iptables and ipvs modes, like kdive in every mode, listen on
// every address when nodePortAddresses is unset.
func HealthCheckIPs(cfg Config, node model.Node) []netip.Addr {
	if len(cfg.NodePortAddresses) == 0 || slices.ContainsFunc(cfg.NodePortAddresses, func(p netip.Prefix) bool { return p.Bits() == 0 }) {
		return []netip.Addr{netip.IPv4Unspecified()}
	}
	return nodePortNodeIPs(cfg, node)
}
