// Package echo is the test server that lab pods run (`kdive echo`). It
// answers HTTP on every TCP listener and datagrams on every UDP listener with
// one JSON object,
//
//	{"pod":NAME,"namespace":NS,"node":NODE,"podIP":IP,"client":"IP:PORT"}
//
// so that a request from another pod shows which endpoint answered and
// whether the client's source address survived the service proxy. The wire
// object is stable: `kdive verify`, scripts and tests parse it.
//
// The package owns its own sockets and nothing else. It does not touch kernel
// state (no netlink, sysctls or namespaces: the lab starts it inside the pod's
// namespace), does not know about Kubernetes objects (the caller supplies the
// Identity, usually from the downward-API environment via IdentityFromEnv),
// and logs only through the injected slog.Logger.
//
// Where the fields come from:
//
//   - client is the peer address the socket saw: the TCP peer for HTTP
//     (never a header such as X-Forwarded-For), the datagram's source for UDP.
//   - podIP is Identity.PodIP when set. When it is empty it is the local
//     address the request arrived on: the accepted connection's local address
//     for TCP, and for UDP the datagram's destination address, read with
//     IP_PKTINFO (IPv4 sockets) or IPV6_PKTINFO (IPv6 and dual-stack sockets,
//     IPv4-mapped addresses unmapped). A socket bound to a wildcard address
//     therefore still reports the address the client asked for.
//
// UDP replies are sent with a plain WriteTo, so their source address is the
// one the kernel's routing picks. In a pod, which has one address, that is the
// address the client sent to; on a host with several addresses a reply can
// leave from another one (golang.org/x/net/ipv6 cannot pin an IPv4-mapped
// source on a dual-stack socket, so pinning it only for some sockets would be
// inconsistent).
package echo
