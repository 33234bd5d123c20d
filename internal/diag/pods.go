package diag

import (
	"net/netip"
	"slices"
	"strings"

	"github.com/kdive/kdive/internal/cni/ipam"
	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/model"
)

// PodRow is one pod on the node: what `crictl ps` and `crictl inspectp`
// tell about its network, joined with the node's kernel state.
type PodRow struct {
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name,omitempty"`
	Node      string `json:"node"`
	IP        string `json:"ip,omitempty"`
	// HostInterface is the host side of the pod's veth.
	HostInterface string `json:"hostInterface,omitempty"`
	// NetNS is the path of the pod's network namespace.
	NetNS string `json:"netns,omitempty"`
	// ContainerID and IfName are the CNI attachment (the sandbox's ID and
	// the interface inside the pod).
	ContainerID string `json:"containerID,omitempty"`
	IfName      string `json:"ifName,omitempty"`
	// Route is the node's route the kernel uses to reach the pod.
	Route string `json:"route,omitempty"`
	// Problems are inconsistencies between the pod, the IPAM store and the
	// kernel (no veth, no route, an address no pod holds, ...).
	Problems []string `json:"problems,omitempty"`
}

// AnnotatePods lists the pods of the topology's node: every address of
// its IPAM store and every pod scheduled there, each joined with its veth,
// route and attachment. Attached pods come first, by address.
func AnnotatePods(topo *Topology, ks *KernelState) []PodRow {
	v := newView(topo, ks)
	var ips []netip.Addr
	var unattached []Pod
	if v.local.IPAM != nil {
		for _, al := range v.local.IPAM.Allocations {
			ips = append(ips, al.Addr)
		}
	}
	for _, p := range topo.Pods {
		if p.Node != v.local.Name {
			continue
		}
		if !p.IP.IsValid() {
			unattached = append(unattached, p)
		} else if !slices.Contains(ips, p.IP) {
			ips = append(ips, p.IP)
		}
	}
	slices.SortFunc(ips, netip.Addr.Compare)
	rows := make([]PodRow, 0, len(ips)+len(unattached))
	for _, ip := range ips {
		rows = append(rows, v.podRow(ip))
	}
	for _, p := range unattached {
		rows = append(rows, PodRow{Namespace: p.Namespace, Name: p.Name, Node: p.Node, NetNS: p.NetNS,
			ContainerID: p.ContainerID, IfName: p.IfName, Problems: []string{"not attached: no IP yet"}})
	}
	return rows
}

func (v *view) podRow(ip netip.Addr) PodRow {
	row := PodRow{Node: v.local.Name, IP: ip.String()}
	var problems []string
	alloc, hasAlloc := v.allocation(ip)
	pod, found := v.topo.podByIP(ip, v.local.Name)
	if !found && hasAlloc {
		pod, found = v.topo.podByAttachment(alloc.Attachment)
	}
	att := ipam.Attachment{ContainerID: pod.ContainerID, IfName: pod.IfName}
	if hasAlloc {
		att = alloc.Attachment
	}
	row.Namespace, row.Name, row.NetNS = pod.Namespace, pod.Name, pod.NetNS
	row.ContainerID, row.IfName = att.ContainerID, att.IfName
	switch {
	case !hasAlloc && v.local.IPAM != nil:
		problems = append(problems, "address not in the node's IPAM store")
	case hasAlloc && att == (ipam.Attachment{}):
		problems = append(problems, "IPAM entry unreadable (GC frees it)")
	}
	if !found && v.topo.PodsComplete {
		problems = append(problems, "no pod holds this address (leaked allocation?)")
	}
	if found && pod.Node != "" && pod.Node != v.local.Name {
		problems = append(problems, "the pod is scheduled on "+pod.Node)
	}
	var cniRoute kernel.Route
	hasCNIRoute := false
	for _, r := range v.ks.Routes {
		if r.Protocol == kernel.RouteProtocolCNI && r.Dst == netip.PrefixFrom(ip, 32) {
			cniRoute, hasCNIRoute = r, true
		}
	}
	if att != (ipam.Attachment{}) {
		for _, l := range v.ks.Links {
			if a, ok := vethAttachment(l.Alias); ok && a == att {
				row.HostInterface = l.Name
			}
		}
	}
	if row.HostInterface == "" && hasCNIRoute {
		row.HostInterface = cniRoute.Dev
	}
	if row.HostInterface == "" {
		problems = append(problems, "no host veth")
	}
	routed := v.topo.Network.Interface != model.InterfaceBridge
	if routed && !hasCNIRoute {
		problems = append(problems, "no /32 route on the node")
	}
	if r, ok := v.lookup(ip); ok {
		row.Route = routeText(r)
		if r.Blackhole {
			problems = append(problems, "the node's route for it is the blackhole")
		}
	}
	row.Problems = problems
	return row
}

// lookup is the main-table route the kernel would pick for ip: the longest
// matching prefix, then the lowest metric.
func (v *view) lookup(ip netip.Addr) (kernel.Route, bool) {
	var best kernel.Route
	found := false
	for _, r := range v.ks.Routes {
		bits, contains := 0, true
		if r.Dst.IsValid() {
			bits, contains = r.Dst.Bits(), r.Dst.Contains(ip)
		}
		if !contains {
			continue
		}
		bestBits := 0
		if best.Dst.IsValid() {
			bestBits = best.Dst.Bits()
		}
		if !found || bits > bestBits || (bits == bestBits && r.Metric < best.Metric) {
			best, found = r, true
		}
	}
	return best, found
}

// podLabel is "namespace/name", else "-".
func podLabel(r PodRow) string {
	if r.Name == "" {
		return "-"
	}
	return strings.TrimPrefix(r.Namespace+"/"+r.Name, "/")
}
