// Package kernel is kdive's one door to the operating system: network
// namespaces, links, addresses, routes, tunnels (IPIP, VXLAN) with their
// FDB and neighbour entries, dummy devices, sysctls and modules, iptables
// table info, IPVS, ipsets and conntrack; nftables has its own door, the
// nft subpackage (typed transactions and listings, the `nft -i` session,
// the generation, the bridge port guard, a fake). Every other package asks
// these; none of them calls netlink, setns or execs `nft` itself: one
// narrow door to the OS, so what kdive does to a kernel is read in one
// place. The proxy backends build the iptables-restore input themselves but
// run the tools through NetNS.Run. NetNS.Nft runs a raw nft script: for
// the feature probe and for tests that play someone else changing a table.
//
// A NetNS names a network namespace (bind-mounted under /run/netns like
// `ip netns add` does, so `ip netns exec` works on it too; /run/netns is
// made a shared mount point of its own first, as `ip netns add` makes it,
// so that nobody's later bind of it hides kdive's mounts) and carries a
// netlink handle opened in it, so most operations never switch the calling
// thread. Operations that must run inside the namespace (sysctls, execs of
// `nft`) lock the OS thread, enter, and always come back.
//
// Probe tells whether the running kernel has a feature (ipip, ip_vs, dummy,
// vxlan, ...) by trying it in a throwaway namespace, so callers can fail with
// a clear message instead of a netlink errno.
//
// Test helpers live in the ktest subpackage.
package kernel
