package kernel

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"
)

// ConntrackFilter selects connection-tracking entries. Zero fields match
// anything; at least one address must be set.
type ConntrackFilter struct {
	// Protocol is an IP protocol number (unix.IPPROTO_UDP, ...).
	Protocol uint8
	// OrigDst and OrigDstPort match the original direction's destination:
	// the service address the client sent to.
	OrigDst     netip.Addr
	OrigDstPort uint16
	// ReplySrc and ReplySrcPort match the reply direction's source: the
	// endpoint the connection was DNATed to.
	ReplySrc     netip.Addr
	ReplySrcPort uint16
}

func (f ConntrackFilter) String() string {
	return fmt.Sprintf("proto %d orig-dst %v:%d reply-src %v:%d", f.Protocol, f.OrigDst, f.OrigDstPort, f.ReplySrc, f.ReplySrcPort)
}

func (f ConntrackFilter) matches(fl conntrack.Flow) bool {
	o, r := fl.TupleOrig, fl.TupleReply
	return (f.Protocol == 0 || o.Proto.Protocol == f.Protocol) &&
		(!f.OrigDst.IsValid() || o.IP.DestinationAddress == f.OrigDst) &&
		(f.OrigDstPort == 0 || o.Proto.DestinationPort == f.OrigDstPort) &&
		(!f.ReplySrc.IsValid() || r.IP.SourceAddress == f.ReplySrc) &&
		(f.ReplySrcPort == 0 || r.Proto.SourcePort == f.ReplySrcPort)
}

// DeleteConntrack deletes the connection-tracking entries matching any of
// the filters and returns how many went. Stale UDP entries would keep
// sending a client's datagrams to an endpoint that is gone.
func (n *NetNS) DeleteConntrack(filters ...ConntrackFilter) (int, error) {
	if len(filters) == 0 {
		return 0, nil
	}
	for _, f := range filters {
		if !f.OrigDst.IsValid() && !f.ReplySrc.IsValid() {
			return 0, fmt.Errorf("delete conntrack entries: filter %s names no address", f)
		}
	}
	c, err := conntrack.Dial(&netlink.Config{NetNS: n.NetlinkNS()})
	if err != nil {
		return 0, fmt.Errorf("conntrack in %s: %w", n, err)
	}
	defer c.Close()
	flows, err := c.Dump(nil)
	if err != nil {
		return 0, fmt.Errorf("dump conntrack in %s: %w", n, err)
	}
	deleted := 0
	var errs []error
	for _, fl := range flows {
		for _, f := range filters {
			if !f.matches(fl) {
				continue
			}
			if err := c.Delete(fl); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("delete conntrack entry %v: %w", fl.TupleOrig, err))
			} else {
				deleted++
			}
			break
		}
	}
	return deleted, errors.Join(errs...)
}
