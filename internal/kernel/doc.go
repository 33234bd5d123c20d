// Package kernel is kdive's one door to the operating system: network
// namespaces, links, addresses, routes, sysctls and the netfilter tools. Every
// other package asks this one; none of them calls netlink, setns or execs
// `nft` itself (see STYLE.md, "One narrow door to the OS").
//
// A NetNS names a network namespace (bind-mounted under /run/netns like
// `ip netns add` does, so `ip netns exec` works on it too) and carries a
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
