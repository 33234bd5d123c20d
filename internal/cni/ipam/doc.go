// Package ipam hands out pod addresses from a node's pod block
// (node.spec.podCIDR) and remembers them on disk, so they survive restarts of
// the plugin (one process per CNI call) and of the node agent.
//
// # Store layout
//
// A Store lives in one directory (the plugin's dataDir), laid out like the
// reference host-local plugin's:
//
//	lock               flock(2)ed exclusively around every operation
//	last_reserved_ip   the address handed out last; the next search starts after it
//	10.0.1.2           one file per allocated address: "<containerID>\n<ifname>\n"
//
// Addresses are handed out round-robin from after the last one reserved, so
// an address freed by a DEL is not handed to the very next pod (a peer still
// holding a connection to the old pod would otherwise reach the new one).
// Files are written to a temporary name and renamed, so a crash never leaves
// a half-written entry; a file named by an address is the allocation. The
// directory is synced after each rename and each removal, before ADD or DEL
// returns, so that after a power cut an allocation does not vanish (its
// address would go to a second pod) nor a freed one come back
// (TestDurableAllocateRelease reads the system calls under strace).
//
// # Reserved addresses
//
// Of a block such as 10.0.1.0/24, three addresses are never handed out:
//
//   - the network address (10.0.1.0) and the broadcast address (10.0.1.255);
//   - the first host address (10.0.1.1): the gateway on kube-bridge in bridge
//     mode. Routed mode does not use it (pods' gateway is 169.254.1.1), but it
//     stays reserved there too, so a node can switch modes and any tool can
//     assume .1 is never a pod.
//
// A /24 thus holds 253 pods (.2 to .254). The smallest block is a /30 (one
// pod), the largest a /16; IPv4 only.
//
// The package knows nothing about CNI or the kernel: it is a file store with
// a lock, testable without root.
package ipam
