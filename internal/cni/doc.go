// Package cni is the logic of the kdive CNI plugin (cmd/kdive-cni): ADD, DEL,
// CHECK, STATUS and GC (CNI spec 1.1; VERSION is skel's) over a pod's
// network namespace, and the network configuration the node agent writes
// for it. It owns the plugin's contract with the runtime (spec versions,
// result, error codes) and, through the ipam subpackage, pod addresses. The
// kernel work goes through internal/kernel; this package never calls
// netlink, setns or sysctl itself, and it never writes to stdout except the
// result (stdout is the runtime's channel).
//
// # The conflist contract
//
// The agent renders the node's settings with NewConfList and writes them
// with WriteConfList as 10-kdive.conflist into the CNI config directory
// (/etc/cni/net.d; a lab node's net.d). Any CNI client then attaches pods
// with that file and the plugin on CNI_PATH, installed under the plugin
// type's name, "kdive":
//
//	{
//	  "cniVersion": "1.1.0",
//	  "name": "kdive",
//	  "plugins": [{
//	    "type": "kdive",
//	    "capabilities": {"portMappings": true},  // hostPorts, see below
//	    "mode": "routed",            // or "bridge"
//	    "podCIDR": "10.0.1.0/24",    // node.spec.podCIDR
//	    "mtu": 1450,                 // uplink MTU minus encapsulation overhead
//	    "dataDir": "/var/lib/cni/kdive",
//	    "hostVethPrefix": "cali"     // routed only ("bridge": "kube-bridge" in bridge mode)
//	  }]
//	}
//
// ParseConfig reads it strictly: an unknown key is an error naming it and
// the nearest known key ("podCDIR": did you mean "podCIDR"?), as is a
// missing or invalid value, a key of the other mode, or an "ipam" section
// (the plugin assigns addresses itself). Errors reach the runtime as CNI
// errors: 6 (not decodable), 7 (invalid config), 4 (bad CNI_* variables),
// 8 (bad netns), 5 (IPAM store I/O), 50 (STATUS: not available; ADD in
// routed mode without a node route to 169.254.1.1), 999 (everything else,
// including a full block). Messages read "kdive-cni: ADD c1/eth0: ...".
//
// # Addresses
//
// Pods get addresses from podCIDR, never its network, broadcast or first
// host address (the bridge's in bridge mode, reserved in routed mode too);
// see package ipam.
//
// # Routed mode (Calico style)
//
// Each pod gets a veth: CNI_IFNAME in the pod with its address as a /32, a
// link-scope route to 169.254.1.1 and the default route through it; the
// host end, named hostVethPrefix + the first hex digits of
// sha1(containerID/ifname) (15 characters, "cali" + 11), is up without an
// address, with proxy_arp=1, proxy_delay=0 and forwarding=1, and the node
// gets "<podIP>/32 dev cali... scope link" with protocol
// kernel.RouteProtocolCNI. No one owns 169.254.1.1: the host end answers the
// pod's ARP for it with its own MAC (proxy ARP). The kernel only proxies ARP
// for an address it can route, so the node needs a route covering
// 169.254.1.1: its default route on a real node, and in routed mode the
// agent (internal/podnet) also installs "169.254.1.1/32 dev lo" so nodes
// without a default route (lab nodes) work. ADD and STATUS fail with a
// message saying so when there is none, rather than attach a pod that
// cannot reach anything. The host end has rp_filter=1 (strict), so the
// kernel drops whatever the pod sends from an address other than its own.
//
// # Bridge mode (kube-router style)
//
// The plugin creates the bridge (kube-bridge) on first use, with the
// block's first address and the configured MTU, and attaches each pod's
// veth to it (host end "veth" + 8 hex digits, hairpin on, so a pod can reach
// itself through a service address). The pod gets its address with the
// block's prefix length and the default route via the bridge's address. The
// bridge is shared and stays when pods go. IP forwarding and other node
// sysctls are the agent's.
//
// On a bridge no reverse path check applies, so each pod's port is guarded
// by the bridge table "bridge kdive-antispoof" (nft.PortGuard, spoken
// over netlink: no nft binary needed): a frame from the port passes only
// as IPv4 or ARP from the pod's own MAC and address; another source
// address, another MAC (which would teach the bridge a neighbour's MAC),
// IPv6 and VLAN-tagged frames are dropped. ADD adds the port's element,
// DEL removes it after the veth, GC forgets ports that are gone or not
// live, CHECK requires it, and CleanupAntiSpoof (kdive agent --cleanup)
// deletes the table (antispoof.go).
//
// # hostPorts
//
// The conflist declares the portMappings capability, so runtimes pass each
// pod's hostPorts as runtimeConfig.portMappings ({"hostPort": 8080,
// "containerPort": 80, "protocol": "tcp", "hostIP": ""}), as they do to the
// upstream portmap plugin, which kdive replaces. NetConf.PortMappings reads
// them strictly (ports 1-65535, tcp/udp/sctp in any case, hostIP empty,
// 0.0.0.0 or one IPv4 address, no duplicates; IPv6 hostIPs are skipped, as
// pods are IPv4-only); a bad entry fails ADD with code 7 naming it,
// "runtimeConfig.portMappings[1].hostPort: 70000 is out of range 1-65535",
// before anything is built.
//
// ADD programs them last, in one `nft -f` transaction in the node's
// namespace (nft must be on the plugin's PATH on nodes whose pods use
// hostPorts): table "ip kdive-hostport" with the maps hostports (protocol .
// port on every node address) and hostports-ip (one host address), whose
// values are podIP . containerPort, a set hairpin of podIP . podIP, and
// fixed chains that DNAT packets for a local, non-loopback destination
// through the maps at priority dstnat - 1 (prerouting and output, so before
// kube-proxy-like service rules) and masquerade a pod reaching its own
// hostPort (postrouting, srcnat - 1). Loopback is never served
// (route_localnet stays off, cf. CVE-2020-8558). Each ADD recreates the
// table's skeleton idempotently in the same transaction, so a pod gets all
// its mappings or none. A port another pod holds fails ADD naming the port
// and its holder ("hostPort 8080/tcp is already taken: the node forwards it
// to 10.0.1.2:80 (pod c1/eth0)"); the kernel refuses to overwrite a map
// entry with other data anyway. The design note is in hostport.go.
//
// Each attachment's entries are recorded in
// <dataDir>/hostports/<containerID>@<ifname>.json (0600, written by
// rename, under a lock shared by all plugin processes) before they are
// added. DEL deletes them (missing ones and a missing table are success) and
// then the file; an address is released only once no entry leads to it, so
// a new pod never inherits another's hostPort. GC does the same for
// attachments not listed and deletes entries leading to unallocated
// addresses. CHECK verifies the entries, the chains and the state file.
// CleanupHostPorts (kdive agent --cleanup) deletes the table.
//
// # Idempotence and cleanup
//
// ADD is retry-safe: an ADD for an attachment that already holds an address
// keeps that address and rebuilds its veth (deleting the host end an earlier
// ADD left); an interface of that name in the pod that kdive-cni did not
// create is an error, left untouched. A failed ADD leaves nothing behind.
// DEL succeeds when the netns, the veth or the address is already gone, and
// releases the address even when the netns is gone. Host-side veths carry
// the alias "kdive-cni:<containerID>/<ifname>"; DEL deletes only veths so
// marked, so a forged prevResult cannot make the plugin delete a node's
// interface. GC (cni.dev/valid-attachments) frees every address whose
// attachment is not listed, and every host-side veth marked with such an
// attachment (or, unmarked, named after a freed address's attachment).
package cni
