package diag

import (
	"net/netip"
	"slices"

	"github.com/kdive/kdive/internal/cni/ipam"
	"github.com/kdive/kdive/internal/model"
)

// Topology is what kdive knows about the cluster around one node: the
// Kubernetes meaning the annotators give the node's kernel state. A lab
// fills every field from its plan and status; on a real node without the
// API server only this node, its pod block (from the CNI config) and its
// pods (from the IPAM store and the runtime's CNI cache) are known, and the
// annotators say "unknown" for the rest.
type Topology struct {
	// Lab is the lab's name; empty on a real node.
	Lab string
	// Node is the name of the node whose kernel state is annotated.
	Node string
	// Network is the pod network mode; fields are empty when unknown.
	Network model.PodNetwork
	// ProxyMode is the service proxy mode (nftables, iptables, ipvs), if
	// known.
	ProxyMode string
	// Uplink names the node's underlay interface when it cannot be found
	// by the node's IP (which is how the annotators find it first).
	Uplink string
	// Bridge is bridge mode's pod bridge (cni.DefaultBridge when empty).
	Bridge string
	Nodes  []Node
	Pods   []Pod
	// PodsComplete says Pods lists every pod (a lab), so an address no
	// listed pod holds is a leak; otherwise a missing pod proves nothing.
	PodsComplete bool
	// Services are the cluster's services, if known (names kube-ipvs0's
	// addresses; the load-balancing view uses them too).
	Services []Service
	// Subnets are the lab's underlay subnets (empty on a real node).
	Subnets []Subnet
	// ServiceCIDR, LoadBalancerCIDR and ExternalCIDR are the lab's service
	// range, LoadBalancer pool and external client network; invalid when
	// unknown.
	ServiceCIDR      netip.Prefix
	LoadBalancerCIDR netip.Prefix
	ExternalCIDR     netip.Prefix
	// Notes say what could not be known and why; the reports print them.
	Notes []string
}

// Node is one node of the cluster.
type Node struct {
	Name string
	// IP is the node's underlay address; Subnet the underlay subnet it is
	// in (SubnetName its lab name). Either may be invalid when unknown.
	IP         netip.Addr
	Subnet     netip.Prefix
	SubnetName string
	// PodCIDR is the node's pod block (node.spec.podCIDR).
	PodCIDR netip.Prefix
	// IPAM is the node's address store as read; nil when it could not be
	// read (another machine's node, or no store yet).
	IPAM *IPAMState
}

// IPAMState is a node's IPAM store as read.
type IPAMState struct {
	Dir         string
	Allocations []ipam.Allocation
}

// InUse counts the allocations that are pod addresses of block (not its
// network, gateway or broadcast address), as ipam.Store.InUse does.
func (s *IPAMState) InUse(block netip.Prefix) int {
	n := 0
	for _, a := range s.Allocations {
		if block.Contains(a.Addr) && a.Addr != block.Masked().Addr() && a.Addr != ipam.Gateway(block) && a.Addr != ipam.Broadcast(block) {
			n++
		}
	}
	return n
}

// Pod is one pod and its attachment.
type Pod struct {
	Namespace, Name string
	// Node is where the pod is scheduled.
	Node string
	// IP is invalid until the pod is attached.
	IP netip.Addr
	// NetNS is the path of the pod's network namespace, if known.
	NetNS string
	// ContainerID and IfName name the CNI attachment (sandbox ID and the
	// interface in the pod), if known.
	ContainerID, IfName string
}

// FullName is "namespace/name", or the attachment when the pod's name is
// unknown.
func (p Pod) FullName() string {
	if p.Name == "" {
		if p.ContainerID != "" {
			return "container " + shortID(p.ContainerID)
		}
		return ""
	}
	return p.Namespace + "/" + p.Name
}

// Service is one service and the addresses it answers on.
type Service struct {
	Namespace, Name string
	Type            string
	ClusterIP       netip.Addr
	ExternalIPs     []netip.Addr
	LoadBalancerIP  netip.Addr
	Ports           []ServicePort
}

// ServicePort is one port of a service.
type ServicePort struct {
	Name     string
	Port     int32
	Protocol string
	NodePort int32
}

// Subnet is one underlay subnet of a lab.
type Subnet struct {
	Name    string
	CIDR    netip.Prefix
	Gateway netip.Addr
}

// local is this node; a bare Node with the name when the topology does not
// list it.
func (t *Topology) local() Node {
	if n, ok := t.node(t.Node); ok {
		return n
	}
	return Node{Name: t.Node}
}

func (t *Topology) node(name string) (Node, bool) {
	i := slices.IndexFunc(t.Nodes, func(n Node) bool { return n.Name == name })
	if i < 0 {
		return Node{}, false
	}
	return t.Nodes[i], true
}

// nodeByBlock finds the node whose pod block is exactly p.
func (t *Topology) nodeByBlock(p netip.Prefix) (Node, bool) {
	i := slices.IndexFunc(t.Nodes, func(n Node) bool { return n.PodCIDR.IsValid() && n.PodCIDR.Masked() == p.Masked() })
	if i < 0 {
		return Node{}, false
	}
	return t.Nodes[i], true
}

// nodeByIP finds the node with underlay address a.
func (t *Topology) nodeByIP(a netip.Addr) (Node, bool) {
	i := slices.IndexFunc(t.Nodes, func(n Node) bool { return a.IsValid() && n.IP == a })
	if i < 0 {
		return Node{}, false
	}
	return t.Nodes[i], true
}

// podByIP finds the pod holding a, preferring one on node (a restarted pod
// elsewhere may briefly share an old address).
func (t *Topology) podByIP(a netip.Addr, node string) (Pod, bool) {
	var found Pod
	ok := false
	for _, p := range t.Pods {
		if p.IP.IsValid() && p.IP == a {
			if p.Node == node {
				return p, true
			}
			if !ok {
				found, ok = p, true
			}
		}
	}
	return found, ok
}

// podByAttachment finds the pod of a CNI attachment.
func (t *Topology) podByAttachment(a ipam.Attachment) (Pod, bool) {
	i := slices.IndexFunc(t.Pods, func(p Pod) bool {
		return p.ContainerID != "" && p.ContainerID == a.ContainerID && (p.IfName == "" || p.IfName == a.IfName)
	})
	if i < 0 {
		return Pod{}, false
	}
	return t.Pods[i], true
}

// subnetOf finds the lab subnet that is exactly p.
func (t *Topology) subnetOf(p netip.Prefix) (Subnet, bool) {
	i := slices.IndexFunc(t.Subnets, func(s Subnet) bool { return s.CIDR.Masked() == p.Masked() })
	if i < 0 {
		return Subnet{}, false
	}
	return t.Subnets[i], true
}

// servicesAt names the services answering on a.
func (t *Topology) servicesAt(a netip.Addr) []string {
	var out []string
	for _, s := range t.Services {
		if s.ClusterIP == a || s.LoadBalancerIP == a || slices.Contains(s.ExternalIPs, a) {
			out = append(out, s.Namespace+"/"+s.Name)
		}
	}
	return out
}

// shortID is a container ID as crictl prints it: 13 characters.
func shortID(id string) string {
	if len(id) > 13 {
		return id[:13]
	}
	return id
}
