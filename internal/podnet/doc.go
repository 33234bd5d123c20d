// Package podnet programs a node's side of the pod network between nodes:
// the routes to every other node's pod block, the tunnels those routes use,
// and the node's own blackhole route. The node agent hands it a snapshot
// (this node, its peers, the cluster's PodNetwork) and calls Sync whenever
// Nodes change; Sync renders the whole desired state (Render, pure and
// printable) and applies the difference through package kernel, so calling
// it again with the same snapshot changes nothing, and anything deleted by
// hand comes back.
//
// What podnet owns, and so removes when it is no longer wanted: main-table
// routes marked with kernel.RouteProtocolAgent, tunnel devices whose alias
// is LinkAlias (and the device named VXLANDevice), and the FDB and neighbour
// entries on the VXLAN device, and, with Options.NATOutgoing, the nftables
// table NATTable, which masquerades traffic from the node's own pods to
// addresses outside every pod block (Calico's natOutgoing: a VPC-like
// underlay drops pod-addressed packets to hosts such as the API server).
// It never touches a route of another protocol
// (the CNI plugin's pod /32s, the kernel's connected routes, an admin's
// static routes), pods' interfaces, kube-bridge or the uplink's addresses.
// It writes no sysctl other than those in the plan (ip_forward, rp_filter
// on its own tunnel devices, and in bridge mode br_netfilter's
// bridge-nf-call-iptables, loading the module if needed, so a service reply
// from a pod on the client's own bridge is un-NATed), and leaves them set
// on Cleanup:
// other parts of the node (the service proxy) need forwarding too.
//
// # Modes
//
// Every node owns a pod block (node.spec.podCIDR) and installs a blackhole
// route for it with metric BlackholeMetric: a packet for an address of the
// block that no pod holds is dropped here instead of following a default
// route back out. Pods are reached through more specific routes (routed
// mode: the CNI plugin's /32 per pod) or through the connected route of
// kube-bridge (bridge mode), which has metric 0 and so wins over the
// blackhole while the bridge exists.
//
// Between nodes, per PodNetwork.Encap and EncapPolicy:
//
//   - none: "<peer block> via <peer IP> dev <uplink>". Pod addresses appear
//     on the underlay, which must route them. For a peer outside the local
//     subnet the route goes through the underlay's gateway toward the peer
//     (what a BGP speaker would install); a VPC-like underlay drops those
//     packets, which is why cross-subnet encapsulation exists.
//
//   - ipip, routed interface (Calico): the ipip module's fallback device
//     tunl0, up, MTU = uplink - 20, and "<peer block> via <peer IP> dev tunl0
//     onlink". tunl0 has no remote: the kernel takes the outer destination
//     from the route's gateway, so one device serves every peer, and having
//     no local address it receives IPIP from any of them. It carries the
//     block's network address (10.0.1.0/32) so that traffic the node itself
//     sends to remote pods has a pod-block source: the peer answers through
//     its tunnel, where a reply to the node's underlay address would travel
//     unencapsulated with a pod source and be dropped by a VPC-like underlay.
//     podnet makes tunl0's IPv4 addresses exactly that one, as Calico does.
//
//   - ipip, bridge interface (kube-router): one point-to-point IPIP device per
//     encapsulated peer, tun-<10 hex digits of a hash of the peer IP> (the
//     name must fit IFNAMSIZ and survive any IP), local = this node, remote =
//     the peer, MTU = uplink - 20, and "<peer block> via <peer IP> dev tun-…
//     onlink" (the gateway only documents the peer: a point-to-point tunnel
//     has a single destination). Received IPIP matches the tunnel whose local
//     and remote match exactly, so tunl0 may stay down. Each tunnel carries
//     the block's network address for the same reason as tunl0.
//
//   - vxlan (flannel's design, in the kernel alone): one device vxlan.kdive,
//     VNI 4096, UDP 4789, local = node IP on the uplink, learning off, MTU =
//     uplink - 50, address = the block's network address /32, and a MAC
//     derived from the node IP (VTEPMAC: 0a:6b + the four IP bytes, locally
//     administered unicast). Because every node can compute every peer's
//     VTEP MAC, nothing needs to be exchanged or learnt: per peer, a
//     permanent FDB entry "<peer MAC> dst <peer IP>", a permanent neighbour
//     "<peer block network address> lladdr <peer MAC>" and the route
//     "<peer block> via <peer block network address> dev vxlan.kdive onlink".
//     No ARP and no multicast cross the underlay.
//
// EncapPolicy cross-subnet encapsulates only peers whose IP lies outside
// State.Subnet (the uplink address's prefix); peers inside get the direct
// route of encap none. always encapsulates every peer. The shared tunnel
// device (tunl0, vxlan.kdive) exists whenever the mode uses one, even with
// no encapsulated peer yet, so peers that encapsulate toward this node are
// received before this node has heard of them.
//
// Tunnel devices get rp_filter=2 (loose): while a mode or policy change
// rolls through the cluster a peer may already encapsulate while this node
// still routes it directly (or the reverse), and strict reverse-path
// filtering would drop that traffic.
package podnet
