// Package ipvs is kdive's IPVS proxy mode, kube-proxy's IPVS mode with the
// semantics every kdive mode shares (the proxytest case table).
//
// # What the kernel holds
//
//   - kube-ipvs0, a dummy device left down, holds every service address
//     (cluster IPs, external IPs, LoadBalancer IPs) as a /32, so the node
//     takes packets for them as its own: they reach IPVS in LOCAL_IN
//     (arriving) or LOCAL_OUT (from the node itself).
//   - An IPVS virtual server per address, protocol and port, with the
//     endpoints as masquerading real servers: cluster IPs get
//     Port.InternalEndpoints, external and LoadBalancer IPs and NodePorts
//     (one virtual server per Desired.NodePortIPs address) get
//     Port.ExternalEndpoints. The core decided those; this package makes no
//     policy decision of its own.
//   - ipsets holding every (address, protocol, port) by role
//     (KUBE-CLUSTER-IP, KUBE-LOAD-BALANCER, KUBE-NODE-PORT-TCP, ...) and a
//     constant set of iptables rules matching them: masquerade marks (nat),
//     hairpin and SNAT (nat POSTROUTING), LoadBalancer source ranges and
//     DROP for Local policies without local endpoints (mangle, see below).
//     The rules never change with services; only set entries do.
//
// REJECT needs no rule: a virtual server without a real server of weight
// above 0 makes IPVS answer ICMP port unreachable itself.
//
// # Decisions upstream leaves open
//
// The eTP Local short circuit. Traffic from this node or its pods to an
// externalTrafficPolicy: Local service's external addresses goes to all
// its cluster endpoints, as in the iptables and nftables modes (kube-proxy's
// IPVS mode cannot: one virtual server has one set of real servers). Here
// each such service port also gets a firewall-mark virtual server with the
// cluster endpoints; KUBE-SHORT-CIRCUIT maps its external address:ports to
// that mark (ipset skbinfo), and one mangle rule per pod CIDR plus one for
// local sources set it (`-j SET --map-set ... --map-mark`). IPVS prefers a
// packet's firewall-mark virtual server. Marks are 0x10000000|slot<<16,
// clear of the low bits kube-proxy and others use, hashed from the
// service port's name so they stay put.
//
// Filtering happens in mangle, not filter: IPVS hooks LOCAL_OUT right
// after nat, so for the node's own packets filter OUTPUT would come too
// late; mangle precedes IPVS on both paths. kube-proxy's KUBE-IPVS-FILTER
// (refuse new connections to a service address's other ports, which would
// otherwise reach the node's own sockets) is Options.RejectUnknownPorts,
// off by default because the shared case table expects those packets left
// alone.
//
// # Render, trace, apply
//
// Render is pure: a Desired snapshot in, a Ruleset out (addresses, virtual
// servers with real servers, set entries, iptables chains of
// xtables.Rules, which print as iptables-save does). One walker follows a
// packet through a Ruleset: its own chains, ipsets and virtual servers,
// each rule's matches judged by xtables (the iptables mode's walker
// judges them there too), so the case table tests exactly what Sync
// applies; Trace takes its result and Explain narrates its steps.
//
// Sync reads the kernel back (IPVS over netlink via moby/ipvs, kube-ipvs0's
// addresses, ipsets over netfilter netlink, iptables-save) and applies the
// difference, so a restarted agent adopts what it finds instead of
// flushing it: established connections survive restarts. Endpoints that
// leave a virtual server are drained: weight 0 (no new connections, the
// open ones go on) until IPVS counts no connection to them or
// Options.DrainTimeout passes, checked between Syncs by a timer that Sync
// arms. UDP and SCTP ones go at once, as in kube-proxy. The iptables rules
// go through iptables-restore --noflush in the node's flavour (nft or
// legacy, detected as kube-proxy's iptables wrapper does) and only when
// they differ from what iptables-save shows.
//
// Cleanup removes virtual servers on the node's addresses or with kdive's
// marks, kube-ipvs0, the mode's chains in both iptables flavours and its
// ipsets. The nat and filter chains it shares names with the iptables mode
// (KUBE-SERVICES, KUBE-POSTROUTING, KUBE-MARK-MASQ, KUBE-FORWARD) are only
// removed from a table that shows no sign of that mode.
//
// Everything that touches the kernel goes through package kernel.
package ipvs
