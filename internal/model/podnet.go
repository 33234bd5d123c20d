package model

import (
	"fmt"
	"net/netip"
	"slices"
)

// Interface is how pods attach to their node.
type Interface string

const (
	// InterfaceRouted is Calico style: a host-side veth per pod, no bridge,
	// a /32 route per pod, proxy ARP, the pod's gateway 169.254.1.1.
	InterfaceRouted Interface = "routed"
	// InterfaceBridge is kube-router style: pods' veths on kube-bridge,
	// whose address (the block's first) is the pods' gateway.
	InterfaceBridge Interface = "bridge"
	// InterfaceNone is no pod network: another CNI attaches pods and
	// routes them, kdive is the service proxy only (a kube-proxy
	// replacement). The agent accepts it; the pod network's code never
	// sees it.
	InterfaceNone Interface = "none"
)

// Encap is how pod traffic travels between nodes.
type Encap string

const (
	EncapNone  Encap = "none"
	EncapIPIP  Encap = "ipip"
	EncapVXLAN Encap = "vxlan"
)

// EncapPolicy says when to encapsulate.
type EncapPolicy string

const (
	EncapAlways      EncapPolicy = "always"
	EncapCrossSubnet EncapPolicy = "cross-subnet"
)

// Encapsulation overheads subtracted from the uplink MTU for the pod MTU.
const (
	OverheadIPIP  = 20
	OverheadVXLAN = 50
)

// PodNetwork is the cluster-wide pod network choice.
type PodNetwork struct {
	Interface   Interface   `json:"interface"`
	Encap       Encap       `json:"encap"`
	EncapPolicy EncapPolicy `json:"encapPolicy"`
}

// Validate checks the values, naming the field (prefix is the field path of
// the PodNetwork, e.g. "podNetwork").
func (p PodNetwork) Validate(prefix string) error {
	check := func(field, v string, allowed ...string) error {
		if !slices.Contains(allowed, v) {
			return fmt.Errorf("%s.%s: unsupported value %q: must be one of %v", prefix, field, v, allowed)
		}
		return nil
	}
	if err := check("interface", string(p.Interface), "routed", "bridge"); err != nil {
		return err
	}
	if err := check("encap", string(p.Encap), "none", "ipip", "vxlan"); err != nil {
		return err
	}
	return check("encapPolicy", string(p.EncapPolicy), "always", "cross-subnet")
}

// PodMTU is the MTU pods get on an uplink of the given MTU: the uplink's
// minus the encapsulation overhead.
func (p PodNetwork) PodMTU(uplinkMTU int) int {
	switch p.Encap {
	case EncapIPIP:
		return uplinkMTU - OverheadIPIP
	case EncapVXLAN:
		return uplinkMTU - OverheadVXLAN
	}
	return uplinkMTU
}

// Node is a cluster node as the pod network sees it.
type Node struct {
	Name string `json:"name"`
	// IPs are the node's addresses, its InternalIP (the underlay address
	// peers reach) first; the service proxy answers NodePorts on them.
	IPs []netip.Addr `json:"ips,omitempty"`
	// PodCIDR is the node's pod block (node.spec.podCIDR); invalid when
	// the node has none yet.
	PodCIDR netip.Prefix `json:"podCIDR"`
	Zone    string       `json:"zone,omitempty"`
}

// IP is the node's primary address, its InternalIP; invalid when it has
// none.
func (n Node) IP() netip.Addr {
	if len(n.IPs) == 0 {
		return netip.Addr{}
	}
	return n.IPs[0]
}

// Equal says n and o are the same node, field by field.
func (n Node) Equal(o Node) bool {
	return n.Name == o.Name && slices.Equal(n.IPs, o.IPs) && n.PodCIDR == o.PodCIDR && n.Zone == o.Zone
}

// Encapsulate reports whether traffic from a node on localSubnet to peer is
// encapsulated under policy p.
func (p PodNetwork) Encapsulate(localSubnet netip.Prefix, peer netip.Addr) bool {
	if p.Encap == EncapNone {
		return false
	}
	if p.EncapPolicy == EncapCrossSubnet {
		return !localSubnet.Contains(peer)
	}
	return true
}
