// Package nftables is kdive's nftables proxy backend (proxy.Backend, mode
// "nftables"): it turns a proxy.Desired into one nftables table and keeps
// the kernel's copy equal to it, one atomic transaction per Sync.
//
// It owns the table `ip kdive-proxy` and nothing else: it never reads or
// writes another table, and Cleanup deletes exactly that table. Every
// transaction and listing goes through the nft door, internal/kernel/nft.
//
// # Files, along the write path of Sync
//
//	proxier.go      Proxier, New, Sync: the state comes in
//	plan.go         which ports changed and the transaction's plan
//	render.go       Render and the Ruleset's per-port fragments
//	render_port.go  what one service port renders to
//	ir.go rules.go  the Ruleset's values: chains, typed rules, sets, elements
//	comment.go      element comments, shortened when too long
//	diff.go         the difference between two Rulesets
//	transaction.go  that difference as an nft.Transaction
//	apply.go        running it through the door
//	readback.go     the table read back: adoption on restart, drift
//	inspect*.go     the listing parsed into a Ruleset (also for kdive show)
//	walk.go trace.go  the one walker, and Trace folding its steps
//
// # Render, then apply
//
// Render(d) is pure: it builds a Ruleset, the table as Go values (chains of
// typed rules, sets and maps whose elements each know the service port,
// bucket and endpoint they are for). Ruleset.String is the exact nft text;
// one walker (walk.go) interprets the same values the way the kernel
// would: Trace folds its branches into a verdict and Explain narrates its
// steps, so `kdive trace` and the case table cannot disagree; `kdive show
// lb` and `kdive trace` can read them. Sync diffs what it programmed last
// (kept in memory) against the new Ruleset and sends the difference.
//
// # The ruleset's shape
//
// Load balancing lives in a few shared maps, not in a chain per service.
// Service ports are grouped by their endpoint count N; each group has one
// map and one rule:
//
//	map service-ips {            # every service address . protocol . port
//		type ipv4_addr . inet_proto . inet_service : verdict
//		10.1.0.2 . tcp . 80 comment "default/web:http" : goto cluster-ip-3,
//		172.20.1.10 . tcp . 30080 comment "default/web:http" : goto external-3,
//		10.1.0.3 . tcp . 80 comment "default/empty" : goto reject-chain,
//		10.1.0.6 . tcp . 80 comment "default/itp-local" : drop,
//	}
//	map endpoints-3 {            # address . protocol . port . bucket : endpoint
//		typeof ip daddr . meta l4proto . th dport . meta length : ip daddr . th dport
//		10.1.0.2 . tcp . 80 . 0 : 10.0.1.2 . 8080,
//		10.1.0.2 . tcp . 80 . 1 : 10.0.2.2 . 8080,
//		10.1.0.2 . tcp . 80 . 2 : 10.0.3.2 . 8080,
//		172.20.1.10 . tcp . 30080 . 0 : 10.0.1.2 . 8080, ...
//	}
//	chain services { ip daddr . meta l4proto . th dport vmap @firewall-ips
//	                 ip daddr . meta l4proto . th dport vmap @service-ips }
//	chain cluster-ip-3 { jump cluster-ip-masquerade; goto endpoints-3 }
//	chain external-3 { jump mark-for-masquerade; goto endpoints-3 }
//	chain endpoints-3 {
//		dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 3 map @endpoints-3
//	}
//
// nat-prerouting (dstnat) and nat-output (-100, the node's own traffic)
// jump to services; nat-postrouting (srcnat) masquerades packets marked
// 0x4000 (upstream's bit) and hairpin connections (ct status dnat and
// `ip saddr . ip daddr` in the set hairpin, which holds E . E for this
// node's endpoints E). Each of a port's N buckets is one endpoint, so
// numgen spreads connections evenly. NodePorts are keyed by each address
// of Desired.NodePortIPs (127.0.0.1 only with LocalhostNodePorts, which the
// agent never sets in this mode: upstream's nftables mode lacks it too).
// Nothing here depends on the number of services: 10,000 ports of 10
// endpoints are 10,000 + 100,000 elements (plus ~1,000 hairpin pairs),
// 2 shared chains and 16 rules in all.
//
// Traffic decisions, as proxy.Desired gives them:
//   - cluster IP: Port.InternalEndpoints; masqueraded from outside
//     ClusterCIDRs (the node included), always with MasqueradeAll, only the
//     node's own without ClusterCIDRs (cluster-ip-masquerade);
//   - NodePort, external IP, LoadBalancer IP under policy Cluster:
//     masqueraded, cluster endpoints (external-N);
//   - under policy Local: a chain per port, external-<ns/name/proto/port>:
//     pods (ClusterCIDRs) short-circuit to the internal endpoints unmasked,
//     the node (fib saddr type local) too but masqueraded, everyone else
//     gets this node's endpoints with their address kept (map
//     local-endpoints-N);
//   - no endpoints for the traffic: goto reject-chain (tcp reset, else
//     ICMP port unreachable) when the port has none at all
//     (!HasEndpoints), else drop;
//   - LoadBalancer source ranges: firewall-ips jumps to
//     firewall-<port>, which drops other sources, before dispatch;
//   - session affinity (rare, so per port, as upstream): affinity-<port>
//     checks a client set per endpoint (timeout = AffinityTimeout), new
//     clients pick at random (numgen vmap) an endpoint-<port>__<ip>/<port>
//     chain that adds them to its set and DNATs.
//
// Unknown ports of a cluster IP are left alone (ACCEPT), as the case table
// wants (upstream's nftables mode rejects them).
//
// The comment of a service-ips or firewall-ips element names its service
// port, "namespace/name:port"; it is how the table is read back (Inspect,
// adoption, the drift check). nft takes comments of at most 128 bytes and
// refuses the whole transaction otherwise, while Kubernetes names reach
// 63+1+63+1+15 = 143: a longer name is shortened (comment.go), its
// namespace, name and port cut, the longest first, and "~" and a 64-bit
// hash of the full name (13 base32 characters) appended, e.g.
//
//	team-payments-xxx…x/checkout-api-xxx…x:metrics-exporte~torifhoq4dozc
//
// (48, 49 and 15 characters kept of a 63-character namespace and name
// and a 15-character port).
//
// Names that fit are written as they are. Reading back, a shortened
// comment is resolved to the full name among the names known: the
// proxier's (the Desired being synced and the ports it programmed), or
// those given to the inspection's ResolveNames (`kdive verify` gives the
// API objects'); an unknown one is shown as it reads, the cut name with
// the port ending in ~hash.
//
// # Why this shape (measured here, kernel 6.18, nft 1.0.6, 2 cores)
//
// Loading with one `nft -f` into a fresh namespace:
//   - upstream kube-proxy's shape (a chain per service with a numgen
//     anonymous map): 47 s for 10,000 services (issue 4);
//   - a chain per service whose one rule uses a shared named map: 65 s:
//     binding a map to a rule in a new chain makes the kernel walk all the
//     map's elements (nf_tables_bind_set), 10,000 × 100,000;
//   - this shape: about 1.1 s, the same as the floor (the text itself);
//     adding a chain per service that only jumps to shared chains would
//     cost about 0.4 s more.
//
// Small changes: any transaction that deletes something (changing an
// element is a delete and an add) makes the nft process wait, when it
// closes its netlink socket, for the kernel's deferred destruction (an
// RCU grace period, about 10 ms here): a one-element change by `nft -f`
// takes about 15-19 ms. So incremental transactions go through one
// long-running `nft -i` (the session of the nft door, internal/kernel/nft),
// where they take well under a millisecond; replaces and very large
// transactions use `nft -f`. The proxier builds a typed nft.Transaction
// (each operation labelled with its service port, so a refusal names the
// service) and reads the table back as nft's JSON through the same door.
//
// Measured with `kdive bench sync` (MeasureSync; kernel 6.18.44-fc-v1272,
// 2026-12-07, two runs on a quiet machine), GenerateDesired(10000, 10):
// 111,001 elements, 16 rules, a 5.9 MB script:
//   - first Sync 2.14-2.55 s; the floor (the same ruleset, one nft -f,
//     fresh namespace) 1.67-2.10 s: 1.22-1.29×; Render alone 93 ms;
//   - one endpoint replaced: 1.4-1.5 ms; one service added: 2.9-3.0 ms;
//   - Sync told nothing changed: 5-43 µs; the periodic resync (Resync,
//     nothing changed) finding nothing: 26-52 µs.
//
// At 1,000 × 10: first Sync 229-282 ms (floor 179-181 ms), one endpoint
// 1.0-1.7 ms, full resync 24-92 µs. Not re-measured since an earlier run:
// a new Proxier over the existing table (agent restart) 1.45 s, one
// endpoint removed (N 10 -> 9) 2.5 ms. BenchmarkSync10k*,
// BenchmarkLoad10kFloor and BenchmarkRender10k measure the same.
//
// # What is atomic, and incremental updates
//
// Every Sync sends at most one transaction, which the kernel applies whole
// or not at all. The first Sync reads the table an earlier proxier left
// (an agent restart; Inspect's parser) and sends only the difference, so
// a restart changes nothing and affinity clients survive; without a
// readable table, and after a failure or Cleanup, it replaces the table:
// `add table; delete table; table ip kdive-proxy {...}` in one
// transaction, so packets never see it missing. Later Syncs apply
// only the difference, computed per service port: each port's elements,
// uses of shared chains and maps (reference-counted; the last user deletes
// them), and own chains are recorded when rendered, so a changed port is
// taken out and put back, and only what differs is sent — a port moving
// from N to N-1 endpoints is N element deletes, N-1 adds and one
// service-ips change. Desired.Changed names the ports to look at (the
// tracker is the one change detector; the backend keeps no copy of its
// input to compare). When it is nil (unknown), or Node, ClusterCIDRs,
// MasqueradeAll or NodePortIPs changed, Sync renders everything and diffs
// the whole table. A set whose declaration changes
// (an affinity timeout) makes it replace the table. A Sync that changes
// nothing sends nothing. When nft fails, the kernel keeps the old rules,
// Sync returns the error naming the service ports at the lines nft
// refused, and forgets what it knew, so the next Sync replaces the table.
//
// Drift: a full Sync (Desired.Full: the agent's periodic resync) checks the
// kernel's copy. While the namespace's nftables generation (one netlink
// round trip) is the one at which the table was last known, nobody
// changed it; otherwise the table is read back (as on adoption) and
// compared with what was programmed. Elements someone changed are put
// back by the difference; changed chains, rules or sets, and a missing
// table, by a replace (nft 1.0.6 refuses to re-add the endpoints-N rules
// to an existing map). Options.OnRepair hears what was repaired. Partial
// Syncs trust the kernel's copy.
//
// Left to others: UDP conntrack entries of removed endpoints (the core or
// agent should delete them), the healthCheckNodePort server, route_localnet.
// Only IPv4 (table ip); IPv6 addresses in the model are skipped.
package nftables
