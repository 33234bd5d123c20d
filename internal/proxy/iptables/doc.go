// Package iptables is kdive's iptables service proxy mode: upstream
// kube-proxy's iptables rules, programmed through iptables-restore
// --noflush, with the semantics the proxy core decided (proxy.Desired).
// It owns the KUBE-* chains listed below and the jumps to them from the
// built-in chains, in the mangle, nat and filter tables of both
// iptables-nft and iptables-legacy; it never changes other rules. It runs
// iptables tools only through kernel.NetNS.
//
// # Chains
//
// As upstream names and fills them, so operators find what they know:
//
//	nat PREROUTING, OUTPUT  -> KUBE-SERVICES
//	  KUBE-SERVICES   cluster IP  -> KUBE-SVC-<h> (KUBE-SVL-<h> with internalTrafficPolicy Local)
//	                  external IP -> KUBE-EXT-<h>
//	                  LB IP       -> KUBE-FW-<h> (with loadBalancerSourceRanges) or KUBE-EXT-<h>
//	                  last: -d <each NodePort address> -> KUBE-NODEPORTS -> KUBE-EXT-<h>
//	  KUBE-EXT-<h>    Cluster policy: KUBE-MARK-MASQ, KUBE-SVC-<h>; Local policy: the
//	                  node's pods (-s cluster CIDR) and the node (--src-type LOCAL,
//	                  masqueraded) short-circuit to KUBE-SVC-<h>, the rest KUBE-SVL-<h>
//	  KUBE-FW-<h>     -s <each source range> -> KUBE-EXT-<h>; the rest falls through
//	  KUBE-SVC-<h>    masquerade cluster IP traffic from outside the cluster CIDR;
//	  KUBE-SVL-<h>    -m recent --rcheck per endpoint (affinity), then
//	                  -m statistic --probability 1/n, 1/(n-1), ... -> KUBE-SEP-<h>
//	  KUBE-SEP-<h>    -s <endpoint> -> KUBE-MARK-MASQ (hairpin); DNAT (-m recent --set)
//	  KUBE-MARK-MASQ  MARK --or-mark 0x4000
//	nat POSTROUTING -> KUBE-POSTROUTING: MASQUERADE --random-fully what is marked
//	filter INPUT, FORWARD, OUTPUT (ctstate NEW) ->
//	  KUBE-SERVICES          cluster IP: REJECT without endpoints, DROP without local ones
//	  KUBE-EXTERNAL-SERVICES external IP, LB IP, NodePort: the same
//	  KUBE-PROXY-FIREWALL    LB IP traffic KUBE-FW let through un-DNATed: DROP
//	  KUBE-NODEPORTS         health check node ports: ACCEPT
//	  KUBE-FORWARD           marked and established traffic: ACCEPT
//	mangle, nat, filter: KUBE-KDIVE-CANARY (one rule, nothing jumps to it)
//
// <h> is upstream's hash: the first 16 characters of the base32 sha256 of
// "namespace/name:port" and the lower-case protocol; a KUBE-SEP hash also
// covers the endpoint "ip:port". Rules carry -m comment naming the service
// port ("ns/svc:port cluster IP", "ns/svc:port -> 10.0.1.2:8080"), except,
// as upstream, the rules of each endpoint (KUBE-SEP, and KUBE-SVC's jumps
// to them) once the node has more than 1,000 endpoints: they are most of
// the rules and the comments a third of their size (the Ruleset keeps the
// port and endpoint of every rule either way).
//
// Render builds all of it as Go values (Ruleset: chains, rules, the service
// port and endpoint of each rule) and the exact restore text; one walker
// (walk.go) runs a packet through those values as the kernel would, and
// Trace folds where it ends into a verdict while Explain narrates its
// steps. All of it is pure.
//
// # Applying
//
// A full Sync (the first, Desired.Full, after a failure or a lost
// canary) reads iptables-save, restores every kdive chain whose rules, as
// iptables-save prints them back, differ from the desired ones (after a
// restart or for the periodic resync, usually none), deletes kdive chains
// no longer wanted (not those a foreign rule still jumps to) and inserts
// the missing jumps from the built-in chains. A partial Sync
// renders only the ports in Desired.Changed (the others keep their chains
// from the previous Ruleset), compares each chain's text with what was
// last applied and restores only the chains that differ, deleting the
// ones that went away; the shared chains (KUBE-SERVICES, ...) go out only
// when their text changed. A Sync that changes nothing runs no restore.
// Each COMMIT is atomic, and a Sync of several is made so: when one
// fails, the Sync puts back what the ones before it committed
// (rollback.go says how, and what it cannot put back), and the next Sync
// is full.
//
// Before a partial Sync the canary rule is checked in all three tables
// (one iptables-restore listing them); if someone flushed or deleted it,
// the Sync becomes full (Stats.CanaryResyncs). For legacy iptables,
// listing the nat table copies all of it (0.5 s at 10k services), so a
// table is listed only when its entry count or size (IPT_SO_GET_INFO, one
// getsockopt) changed since the canary was last seen.
//
// # Flavour
//
// Options.Flavour, or what the node already uses, decided as upstream's
// iptables-wrapper does: kubelet's KUBE-IPTABLES-HINT or KUBE-KUBELET-
// CANARY in mangle (nft checked first), then kdive's own canary, then
// whichever flavour holds more rules; nft when both are empty.
// iptables-legacy-save is never asked for one table (that creates it).
// The first full Sync removes kdive's rules from the other flavour (a node
// that switched would otherwise run both); Cleanup visits both.
//
// # Cost
//
// iptables-nft-restore spends time quadratic in the size of a transaction
// (a sorted linked list of the chains it names, a 512-bucket hash of every
// chain name per process), and the kernel walks every chain of the table
// on each commit. Large writes therefore go as COMMITs of about 1,000
// rules, 12 per process; service chains first, the shared chains that
// make them reachable last. KUBE-SERVICES is written sorted by target,
// descending, which keeps that list's insertions at its head. Legacy
// iptables replaces the whole table per COMMIT, so it is one transaction,
// except for a first sync into an empty table, which goes as processes of
// about 110,000 rules (libiptc and libxtables are quadratic per process).
//
// Measured on the development machine (2 cores shared with other work,
// load average 3-4, so wall times vary by ±30%; kernel 6.18, iptables
// 1.8.9), n services × 10 endpoints, BenchmarkSync (iptables CPU is the
// restore processes' user+system time):
//
//	                        nft 1k   nft 10k   legacy 1k   legacy 10k
//	first sync              0.43 s    5.5 s      0.26 s      4.9 s
//	  of it iptables CPU    0.32 s    4.2 s      0.19 s      4.2 s
//	one-endpoint change      26 ms    261 ms     111 ms      1.1 s
//	no-op sync              3.2 ms    8.3 ms     0.3 ms      6.5 ms
//	full resync, intact     0.24 s    3.2 s      0.11 s      1.6 s
//	render, cold (all 10k ports): 0.25 s; render + plan of one changed port: 6.4 ms
//
// Upstream kube-proxy on the same machine: nft 1k first sync 6.8 s, 5k
// did not finish in 11 minutes; legacy 10k 10.6 s, change 2.0 s. Of the
// goals at 10k, the first sync (< 5 s) is about met (legacy 4.9 s, nft
// 5.5 s here), the change (< 200 ms) by neither flavour, for reasons
// outside kdive: a change sends 1.5 KB, but iptables-nft's commit makes
// the kernel validate every rule reachable from each base chain that
// jumps to KUBE-SERVICES, once for PREROUTING and once for OUTPUT
// (nft_chain_validate: most of the 231 ms of CPU a change takes at 10k;
// the same restore into unhooked chains takes 20 ms), and legacy iptables
// copies the whole table out and back in (about 1 s at 10k). A full
// resync is mostly iptables-save (nft: 2 s at 10k) and comparing.
package iptables
