package podnet

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/nft"
	"github.com/kdive/kdive/internal/model"
)

// Plan is everything a node should have for the pod network between nodes,
// each entry with the node it serves and the reason it exists, so that
// `kdive show routes` and `kdive trace` can explain it.
type Plan struct {
	Node      string // the local node
	NodeIP    netip.Addr
	Block     netip.Prefix // the local node's pod block
	Network   model.PodNetwork
	Uplink    string
	UplinkMTU int
	Subnet    netip.Prefix

	Sysctls   []SysctlEntry
	Links     []LinkEntry
	FDB       []FDBEntry
	Neighbors []NeighEntry
	Routes    []RouteEntry
	// NATOutgoing is the transaction replacing the natOutgoing table, nil
	// when off.
	NATOutgoing *nft.Transaction
	// Skipped lists the peers left out, with why.
	Skipped []Skipped
}

// SysctlEntry is a sysctl the node needs. Name is in the form
// kernel.NetNS.Sysctl accepts (slashes when a device name has a dot).
type SysctlEntry struct {
	Name, Value string
	Node        string
	Reason      string
}

// LinkEntry is a tunnel device.
type LinkEntry struct {
	Tunnel kernel.Tunnel
	Node   string // the peer of a per-peer tunnel, else the local node
	Reason string
}

// FDBEntry is a static VXLAN forwarding entry toward a peer's VTEP.
type FDBEntry struct {
	Entry  kernel.FDBEntry
	Node   string
	Reason string
}

// NeighEntry is a permanent neighbour entry for a peer's VTEP address.
type NeighEntry struct {
	Neighbor kernel.Neighbor
	Node     string
	Reason   string
}

// RouteEntry is a route podnet owns.
type RouteEntry struct {
	Route  kernel.Route
	Node   string
	Reason string
}

// Skipped is a peer that gets no entries.
type Skipped struct {
	Node   string
	Reason string
}

// String prints the plan, one entry a line with its reason, in the order
// Sync applies it.
func (p *Plan) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# %s %s block %s: %s, %s, %s; uplink %s mtu %d in %s\n",
		p.Node, p.NodeIP, p.Block, p.Network.Interface, p.Network.Encap, p.Network.EncapPolicy,
		p.Uplink, p.UplinkMTU, p.Subnet)
	for _, l := range p.Links {
		fmt.Fprintf(&b, "link %s  # %s\n", l.Tunnel, l.Reason)
	}
	for _, s := range p.Sysctls {
		fmt.Fprintf(&b, "sysctl %s=%s  # %s\n", s.Name, s.Value, s.Reason)
	}
	for _, f := range p.FDB {
		fmt.Fprintf(&b, "fdb %s  # %s\n", f.Entry, f.Reason)
	}
	for _, n := range p.Neighbors {
		fmt.Fprintf(&b, "neigh %s  # %s\n", n.Neighbor, n.Reason)
	}
	for _, r := range p.Routes {
		fmt.Fprintf(&b, "route %s  # %s\n", r.Route, r.Reason)
	}
	for _, s := range p.Skipped {
		fmt.Fprintf(&b, "skip %s  # %s\n", s.Node, s.Reason)
	}
	return b.String()
}

// Change is one write Sync or Cleanup made to the kernel, for the caller to
// log or count (libraries don't log).
type Change struct {
	Action string // "replace" (route, fdb, neigh), "update" (link), "set" (sysctl), "delete"
	Object string // e.g. "route 10.0.3.0/24 via 172.20.2.10 dev tunl0 onlink proto 107"
	Node   string // the node the object serves
}

func (c Change) String() string { return c.Action + " " + c.Object }
