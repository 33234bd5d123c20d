package kernel

import (
	"fmt"
	"net/netip"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"
)

// ConntrackEntry is one tracked connection: what the client sent (Orig)
// and what the kernel expects back (Reply). A DNATed connection's reply
// source is the endpoint it went to; a masqueraded one's reply destination
// is the address it was masqueraded to.
type ConntrackEntry struct {
	Protocol         uint8
	OrigSrc, OrigDst netip.AddrPort
	ReplySrc         netip.AddrPort
	ReplyDst         netip.AddrPort
}

func (e ConntrackEntry) String() string {
	return fmt.Sprintf("proto %d %s -> %s | reply %s -> %s", e.Protocol, e.OrigSrc, e.OrigDst, e.ReplySrc, e.ReplyDst)
}

// ListConntrack returns the namespace's tracked connections matching f
// (all of them with a zero filter).
func (n *NetNS) ListConntrack(f ConntrackFilter) ([]ConntrackEntry, error) {
	c, err := conntrack.Dial(&netlink.Config{NetNS: n.NetlinkNS()})
	if err != nil {
		return nil, fmt.Errorf("conntrack in %s: %w", n, err)
	}
	defer c.Close()
	flows, err := c.Dump(nil)
	if err != nil {
		return nil, fmt.Errorf("dump conntrack in %s: %w", n, err)
	}
	var out []ConntrackEntry
	for _, fl := range flows {
		if !f.matches(fl) {
			continue
		}
		o, r := fl.TupleOrig, fl.TupleReply
		out = append(out, ConntrackEntry{
			Protocol: o.Proto.Protocol,
			OrigSrc:  netip.AddrPortFrom(o.IP.SourceAddress, o.Proto.SourcePort),
			OrigDst:  netip.AddrPortFrom(o.IP.DestinationAddress, o.Proto.DestinationPort),
			ReplySrc: netip.AddrPortFrom(r.IP.SourceAddress, r.Proto.SourcePort),
			ReplyDst: netip.AddrPortFrom(r.IP.DestinationAddress, r.Proto.DestinationPort),
		})
	}
	return out, nil
}
