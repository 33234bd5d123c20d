package proxy

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/kdive/kdive/internal/model"
)

// What a backend's tracer answers about a packet: `kdive trace` and the
// packet-flow tests (package proxytest) speak these types.

// Packet is the first packet of a connection, as it reaches the node's
// netfilter hooks.
type Packet struct {
	Src   netip.Addr
	Proto model.Protocol
	Dst   netip.Addr
	Port  int
	// FromNode: a process on the node itself sends it (the output hook);
	// otherwise it arrives from a pod or the network (prerouting).
	FromNode bool
}

func (p Packet) String() string {
	from := "arriving"
	if p.FromNode {
		from = "from the node"
	}
	return fmt.Sprintf("%s %s -> %s:%d (%s)", p.Proto, p.Src, p.Dst, p.Port, from)
}

// Verdict is what happens to a packet.
type Verdict string

const (
	// DNAT: load-balanced to one of Result.Endpoints.
	DNAT Verdict = "DNAT"
	// DROP: silently dropped (endpoints exist, none for this traffic, or
	// a LoadBalancer source range refuses the client).
	DROP Verdict = "DROP"
	// REJECT: refused with an ICMP error (the service has no endpoints).
	REJECT Verdict = "REJECT"
	// ACCEPT: not service traffic; the proxy leaves it alone.
	ACCEPT Verdict = "ACCEPT"
)

// Result is a traced packet's fate.
type Result struct {
	Verdict Verdict
	// Endpoints are the possible destinations of a DNAT ("ip:port"), each
	// with whether the packet is masqueraded when it goes there.
	Endpoints map[string]bool
}

func (r Result) String() string {
	if r.Verdict != DNAT {
		return string(r.Verdict)
	}
	var eps []string
	for _, ep := range slices.Sorted(maps.Keys(r.Endpoints)) {
		if r.Endpoints[ep] {
			ep += "(masq)"
		}
		eps = append(eps, ep)
	}
	return "DNAT " + strings.Join(eps, " ")
}
