package kernel

import (
	"errors"
	"fmt"
	"syscall"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// What reading the IPVS mode's state back needs beyond ipvs.go and
// ipset.go: the virtual servers' counters, and ipsets whose elements
// carry a comment (ipset's comment extension), which the IPVS mode uses
// to record which service port each virtual server belongs to — IPVS
// itself knows virtual servers only by address, protocol and port.

// IPVSStats are a virtual server's counters since it was created. The
// kernel's netlink interface gives 32-bit connection and packet counts
// (they wrap) and 64-bit byte counts. In is client to real server, Out
// the replies. They are as of the kernel's last rate-estimator pass, which
// sums the per-CPU counters every two seconds.
type IPVSStats struct {
	Connections           uint64
	PacketsIn, PacketsOut uint64
	BytesIn, BytesOut     uint64
}

// Stats reads every IPv4 virtual server's counters, by its String()
// ("TCP 10.1.0.2:80", "FWM 268435457").
func (v *IPVS) Stats() (map[string]IPVSStats, error) {
	svcs, err := v.h.GetServices()
	if err != nil {
		return nil, fmt.Errorf("read ipvs counters in %s: %w", v.ns, err)
	}
	out := make(map[string]IPVSStats, len(svcs))
	for _, s := range svcs {
		if s.AddressFamily != unix.AF_INET {
			continue
		}
		st := s.Stats
		out[fromIPVSService(s).String()] = IPVSStats{
			Connections: uint64(st.Connections), PacketsIn: uint64(st.PacketsIn), PacketsOut: uint64(st.PacketsOut),
			BytesIn: st.BytesIn, BytesOut: st.BytesOut,
		}
	}
	return out, nil
}

// CommentedEntry is an element of a set created with CreateWithComments,
// with its comment.
type CommentedEntry struct {
	IPSetEntry
	Comment string
}

// CreateWithComments creates a hash:ip or hash:ip,port set whose elements
// carry a comment (ipset's comment extension, at most 255 bytes). A set
// of that name that exists already is not an error when it has the same
// type.
func (s *IPSets) CreateWithComments(spec IPSetSpec) error {
	var rev uint8 // the first revision with comments
	switch spec.Type {
	case "hash:ip":
		rev = 2
	case "hash:ip,port":
		rev = 3
	default:
		return fmt.Errorf("create ipset %s in %s: comments on %q sets are not supported", spec.Name, s.ns, spec.Type)
	}
	if spec.SkbInfo {
		return fmt.Errorf("create ipset %s in %s: comments with skbinfo are not supported", spec.Name, s.ns)
	}
	data := nl.NewRtAttr(nl.IPSET_ATTR_DATA|int(nl.NLA_F_NESTED), nil)
	data.AddChild(nl.NewRtAttr(nl.IPSET_ATTR_CADT_FLAGS|int(nl.NLA_F_NET_BYTEORDER), be32(nl.IPSET_FLAG_WITH_COMMENT)))
	_, err := s.request(nl.IPSET_CMD_CREATE, unix.NLM_F_REQUEST|unix.NLM_F_ACK|unix.NLM_F_CREATE,
		nl.NewRtAttr(nl.IPSET_ATTR_SETNAME, nl.ZeroTerminated(spec.Name)),
		nl.NewRtAttr(nl.IPSET_ATTR_TYPENAME, nl.ZeroTerminated(spec.Type)),
		nl.NewRtAttr(nl.IPSET_ATTR_REVISION, nl.Uint8Attr(rev)),
		nl.NewRtAttr(nl.IPSET_ATTR_FAMILY, nl.Uint8Attr(unix.AF_INET)),
		data)
	if err != nil {
		return fmt.Errorf("create ipset %s (%s, comments) in %s: %w", spec.Name, spec.Type, s.ns, err)
	}
	return nil
}

// AddWithComment adds an element with a comment to a set created with
// CreateWithComments. With replace, an element that exists already gets
// the new comment in place; without, it is an error.
func (s *IPSets) AddWithComment(set string, e IPSetEntry, comment string, replace bool) error {
	if len(comment) > nl.IPSET_MAX_COMMENT_SIZE {
		return fmt.Errorf("add %s to ipset %s in %s: comment longer than %d bytes", e, set, s.ns, nl.IPSET_MAX_COMMENT_SIZE)
	}
	flags := unix.NLM_F_REQUEST | unix.NLM_F_ACK
	if !replace {
		flags |= unix.NLM_F_EXCL
	}
	data := entryData(e)
	data.AddChild(nl.NewRtAttr(nl.IPSET_ATTR_COMMENT, nl.ZeroTerminated(comment)))
	if _, err := s.request(nl.IPSET_CMD_ADD, flags, nl.NewRtAttr(nl.IPSET_ATTR_SETNAME, nl.ZeroTerminated(set)), data); err != nil {
		return fmt.Errorf("add %s (%q) to ipset %s in %s: %w", e, comment, set, s.ns, err)
	}
	return nil
}

// ListWithComments reads a set's elements with their comments (empty for
// an element without one). A missing set fails with an error wrapping
// ErrNotFound.
func (s *IPSets) ListWithComments(name string) ([]CommentedEntry, error) {
	msgs, err := s.request(nl.IPSET_CMD_LIST, nl.GetIpsetFlags(nl.IPSET_CMD_LIST),
		nl.NewRtAttr(nl.IPSET_ATTR_SETNAME, nl.ZeroTerminated(name)))
	if errors.Is(err, syscall.ENOENT) {
		return nil, fmt.Errorf("list ipset %s in %s: %w", name, s.ns, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("list ipset %s in %s: %w", name, s.ns, err)
	}
	out, err := parseCommented(msgs)
	if err != nil {
		return nil, fmt.Errorf("list ipset %s in %s: %w", name, s.ns, err)
	}
	return out, nil
}

// parseCommented collects the elements of a one-set dump with comments.
func parseCommented(msgs [][]byte) ([]CommentedEntry, error) {
	var out []CommentedEntry
	for _, m := range msgs {
		if len(m) < nl.SizeofNfgenmsg {
			continue
		}
		attrs, err := parseAttrs(m[nl.SizeofNfgenmsg:])
		if err != nil {
			return nil, fmt.Errorf("parse ipset message: %w", err)
		}
		for _, a := range attrs {
			if attrType(a) != nl.IPSET_ATTR_ADT {
				continue
			}
			elems, err := parseAttrs(a.Value)
			if err != nil {
				return nil, fmt.Errorf("parse ipset elements: %w", err)
			}
			for _, el := range elems {
				if attrType(el) != nl.IPSET_ATTR_DATA {
					continue
				}
				e, err := parseIPSetEntry(el.Value)
				if err != nil {
					return nil, err
				}
				out = append(out, CommentedEntry{IPSetEntry: e, Comment: elementComment(el.Value)})
			}
		}
	}
	return out, nil
}

func elementComment(b []byte) string {
	attrs, err := parseAttrs(b)
	if err != nil {
		return ""
	}
	for _, a := range attrs {
		if attrType(a) == nl.IPSET_ATTR_COMMENT {
			return attrString(a.Value)
		}
	}
	return ""
}
