package diag

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/kdive/kdive/internal/cni/ipam"
	"github.com/kdive/kdive/internal/kernel"
)

// BlockRow is one pod block: which node owns it, how full its IPAM store
// is, and how this node reaches it.
type BlockRow struct {
	Block  string `json:"block"`
	Node   string `json:"node,omitempty"` // absent: a block this node routes that no known node owns
	NodeIP string `json:"nodeIP,omitempty"`
	// InUse is how many addresses the owner's IPAM store has given out;
	// absent when that store cannot be read (another machine's node).
	InUse *int `json:"inUse,omitempty"`
	// Capacity is how many pods the block holds (ipam.Capacity).
	Capacity int `json:"capacity"`
	// Local is true for this node's own block.
	Local bool `json:"local,omitempty"`
	// Route is this node's route for the block (blackhole for its own).
	Route    string   `json:"route,omitempty"`
	Problems []string `json:"problems,omitempty"`
}

// AnnotateBlocks lists the pod blocks of every node of topo, then the
// blocks this node routes (kdive agent routes) that no known node owns,
// ordered by block.
func AnnotateBlocks(topo *Topology, ks *KernelState) []BlockRow {
	v := newView(topo, ks)
	rows := []BlockRow{}
	seen := map[netip.Prefix]bool{}
	for _, n := range topo.Nodes {
		if !n.PodCIDR.IsValid() {
			continue
		}
		b := n.PodCIDR.Masked()
		seen[b] = true
		row := BlockRow{Block: b.String(), Node: n.Name, Capacity: blockCapacity(b), Local: n.Name == v.local.Name}
		if n.IP.IsValid() {
			row.NodeIP = n.IP.String()
		}
		if n.IPAM != nil {
			inUse := n.IPAM.InUse(b)
			row.InUse = &inUse
			if topo.PodsComplete {
				pods := 0
				for _, p := range topo.Pods {
					if p.IP.IsValid() && b.Contains(p.IP) {
						pods++
					}
				}
				if pods != inUse {
					row.Problems = append(row.Problems, fmt.Sprintf("%d address(es) allocated but %d pod(s) hold one", inUse, pods))
				}
			}
		}
		row.Route = v.blockRoute(b)
		if row.Route == "" && len(ks.Routes) > 0 {
			row.Problems = append(row.Problems, "this node has no route for it")
		}
		rows = append(rows, row)
	}
	for _, r := range ks.Routes {
		if r.Protocol != kernel.RouteProtocolAgent || !r.Dst.IsValid() || seen[r.Dst] || r.Dst.Bits() == 32 {
			continue
		}
		seen[r.Dst] = true
		rows = append(rows, BlockRow{Block: r.Dst.String(), Capacity: blockCapacity(r.Dst), Route: routeText(r)})
	}
	slices.SortFunc(rows, func(a, b BlockRow) int {
		return netip.MustParsePrefix(a.Block).Addr().Compare(netip.MustParsePrefix(b.Block).Addr())
	})
	return rows
}

// blockRoute is this node's route with exactly that destination, the one
// with the lowest metric (kube-bridge's before the blackhole).
func (v *view) blockRoute(b netip.Prefix) string {
	var best kernel.Route
	found := false
	for _, r := range v.ks.Routes {
		if r.Dst == b && (!found || r.Metric < best.Metric) {
			best, found = r, true
		}
	}
	if !found {
		return ""
	}
	return routeText(best)
}

// blockCapacity is ipam.Capacity for blocks ipam accepts, else 0.
func blockCapacity(b netip.Prefix) int {
	if ipam.CheckBlock(b) != nil {
		return 0
	}
	return ipam.Capacity(b)
}
