// Package diag is kdive's diagnostics: `kdive show` (this package's
// show, routes, links, pods and blocks files), `kdive trace` (trace*.go) and
// the load-balancing view `kdive show lb` (lb*.go).
//
// # kdive show
//
// Operators read `ip route`, `ip addr` and `crictl ps` and map addresses
// back to pods and nodes in their heads; show does the mapping. It is built
// in three layers:
//
//   - a collector (Collect, Target.Topology, ReadKernel) reads a node's
//     kernel state through package kernel (KernelState: links, main-table
//     routes, tunnels, VXLAN FDB) and what is known of the cluster around it
//     (Topology: nodes with IP, subnet and pod block, pods with IP, netns and
//     CNI attachment, services, the lab's underlay ranges). In a lab that is
//     the lab's plan and status (lab.GetStatus: the pods and services of
//     the lab's store or, in a Kubernetes lab, of its API server, each pod's
//     network namespace from lab.PodNetNSPath), every node's IPAM store and
//     the libcni cache (the lab's own; in a Kubernetes lab each node's
//     containerd's, under the node's root directory: lab.Plan.IPAMDir and
//     CNICacheDir); hostNetwork pods are their node and not listed. On a
//     real node (Target without Lab: the process's own network namespace)
//     it is the kdive conflist in /etc/cni/net.d, the IPAM store it names
//     and the runtime's libcni cache in /var/lib/cni (which records each
//     pod's name in its CNI_ARGS). The API server is not asked, so on a
//     real node other nodes' blocks are shown by address;
//   - pure annotators (AnnotateRoutes, AnnotateLinks, AnnotatePods,
//     AnnotateBlocks) turn a Topology and a KernelState into rows, each with
//     its meaning; they never touch the kernel, so tests feed them by hand;
//   - renderers (Show*) print the rows as a table or as JSON (Output).
//
// Ownership is read from the kernel, never assumed: the agent's routes carry
// protocol kernel.RouteProtocolAgent (107), the CNI plugin's per-pod /32s
// kernel.RouteProtocolCNI (108), host-side pod veths the alias
// "kdive-cni:<containerID>/<ifname>", podnet's tunnels the alias
// podnet.LinkAlias. Whatever is neither kdive's, the kernel's connected
// route of the node subnet, nor (in a lab) the underlay's, is "foreign".
// The encapsulation of a peer block comes from the route's device (tunl0:
// IPIP; vxlan.kdive: VXLAN, its VTEP from the FDB; tun-<hash>: bridge
// mode's per-peer IPIP tunnel; the uplink: direct) and the subnet relation
// from the peer's IP and this node's subnet.
//
// # kdive show lb and kdive trace
//
// lb.go asks the proxy mode's Inspect (InspectProxy, inspect.go) for the
// node's load-balancing table as the kernel holds it and names each
// endpoint's pod and node from the Topology. trace*.go walks a lab: each
// namespace (pods, nodes, router, external client, a Kubernetes lab's
// control-plane host; a hostNetwork pod is its node) with the addresses it
// holds, so every next hop the kernel's route lookup picks leads to the
// namespace owning it; the node that first sees the packet load-balances
// it with the same Inspection, and each endpoint's branch follows routes,
// tunnels (VXLAN via its neighbour and FDB entries), the router's VPC
// check, decapsulation and delivery, then the reply. TraceReport prints as
// detailed text, --minimal (stable, for tests) or JSON.
//
// # JSON (-o json), stable field names
//
// Every report is one object with "lab" (absent on a real node), "node"
// (absent when a lab-wide pods or blocks report covers every node), the rows,
// and "notes" (what could not be known). Empty strings and absent values
// are omitted.
//
// routes: {"lab","node","routes":[...],"notes"}; each route:
//
//	route        the route as `ip route` prints it, without its protocol
//	dst          destination prefix, or "default"
//	gateway      next hop
//	dev          output device
//	blackhole    true for a blackhole route
//	protocol     kdive-agent | kdive-cni | kernel | boot | static | dhcp | ... | the number
//	metric       the route's metric
//	kind         own-block | peer-block | pod | pod-bridge | pod-gateway | node-subnet |
//	             underlay | service-cidr | lb-pool | foreign
//	owner        kdive-agent | kdive-cni | kernel | lab | foreign
//	node         the node owning the destination (a pod block's node)
//	pod          namespace/name of the pod a /32 leads to
//	encap        none | ipip | vxlan (peer-block only)
//	crossSubnet  whether the peer is in another underlay subnet (when known)
//	meaning      the sentence, e.g. "pod block 10.0.3.0/24 of node-3 via
//	             vxlan.kdive (VXLAN to 172.20.2.10, cross-subnet)"
//
// links: {"lab","node","links":[...],"notes"}; each link:
//
//	name, index, type (the kernel's: veth, bridge, ipip, vxlan, dummy, ...),
//	up, mtu, mac, addrs (IPv4 prefixes), alias, master (its bridge)
//	role         uplink | tunnel | vxlan | pod-veth | bridge | ipvs | loopback | foreign
//	pod          namespace/name (pod-veth)
//	attachment   containerID/ifname from the veth's alias (pod-veth)
//	peers        [{"node","ip","mac"}]: a tunnel's remote nodes (tunl0: its routes'
//	             gateways; tun-*: its remote; VXLAN: its FDB entries with the VTEP MAC)
//	ports        a bridge's ports
//	serviceIPs   kube-ipvs0's addresses
//	meaning      the sentence
//
// pods: {"lab","node","pods":[...],"notes"}; each pod (one per address of the
// node's IPAM store and per pod scheduled on the node):
//
//	namespace, name, node, ip
//	hostInterface  the host side of its veth
//	netns          path of its network namespace
//	containerID, ifName  the CNI attachment
//	route          the node's route the kernel uses to reach it
//	problems       e.g. "no host veth", "no /32 route on the node",
//	               "no pod holds this address (leaked allocation?)", "not attached: no IP yet"
//
// blocks: {"lab","node","blocks":[...],"notes"}; each block:
//
//	block      the pod block
//	node       its owner (absent: a block this node routes that no known node owns)
//	nodeIP     the owner's underlay address
//	inUse      addresses its IPAM store has given out (absent: store not readable here)
//	capacity   pods the block holds (ipam.Capacity)
//	local      true for the node's own block
//	route      the node's route for it
//	problems   e.g. "2 address(es) allocated but 1 pod(s) hold one"
//
// Target and Output are shared with the load-balancing view (ShowLB), which
// takes the same Target and prints through the same Output.
package diag
