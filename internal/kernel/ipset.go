package kernel

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// IP sets, spoken to over netfilter netlink directly rather than through
// vishvananda/netlink's ipset calls: those cannot carry an element's
// skbinfo mark (`skbmark`, needed by `-j SET --map-set ... --map-mark`) and
// log every attribute they do not know. The types kdive uses are the ones
// kube-proxy's IPVS mode uses.

// IPSetSpec describes a set to create.
type IPSetSpec struct {
	Name string
	// Type is one of hash:ip, hash:ip,port, hash:ip,port,ip,
	// hash:ip,port,net, bitmap:port.
	Type string
	// SkbInfo lets elements carry an skbmark (hash:ip,port only here).
	SkbInfo bool
	// PortFrom and PortTo bound a bitmap:port set.
	PortFrom, PortTo uint16
}

// IPSetEntry is one element. Which fields apply depends on the set type:
// IP (hash:ip*), Proto and Port (…,port and bitmap:port, where Proto is
// unused), IP2 (hash:ip,port,ip), Net2 (hash:ip,port,net), SkbMark (sets
// created with SkbInfo; 0 means none).
type IPSetEntry struct {
	IP      netip.Addr
	Proto   string // "tcp", "udp", "sctp"
	Port    uint16
	IP2     netip.Addr
	Net2    netip.Prefix
	SkbMark uint32
}

// Key is the element without its extensions, in ipset's syntax:
// "10.1.0.2,tcp:80", "10.0.1.2,tcp:8080,10.0.1.2", "30080".
func (e IPSetEntry) Key() string {
	var b strings.Builder
	if e.IP.IsValid() {
		b.WriteString(e.IP.String())
		if e.Proto != "" {
			b.WriteString(",")
		}
	}
	if e.Proto != "" {
		fmt.Fprintf(&b, "%s:%d", e.Proto, e.Port)
	} else if !e.IP.IsValid() {
		b.WriteString(strconv.Itoa(int(e.Port)))
	}
	if e.IP2.IsValid() {
		b.WriteString("," + e.IP2.String())
	}
	if e.Net2.IsValid() {
		b.WriteString("," + e.Net2.String())
	}
	return b.String()
}

// String is the element as `ipset list` prints it, extensions included.
func (e IPSetEntry) String() string {
	if e.SkbMark != 0 {
		return fmt.Sprintf("%s skbmark %#x", e.Key(), e.SkbMark)
	}
	return e.Key()
}

// IPSet is a set read back from the kernel.
type IPSet struct {
	Name    string
	Type    string
	SkbInfo bool
	Entries []IPSetEntry
}

// IPSetLoaded reports whether the ip_set module is loaded (or built in):
// without it no set exists, and talking to it would load it.
func IPSetLoaded() bool {
	_, err := os.Stat("/sys/module/ip_set")
	return err == nil
}

// IPSets is an open netfilter netlink socket in a namespace, for IP set
// operations. Close it when done.
type IPSets struct {
	ns   *NetNS
	sock *nl.NetlinkSocket
	seq  uint32
}

// OpenIPSets opens the namespace's IP sets.
func (n *NetNS) OpenIPSets() (*IPSets, error) {
	s, err := nl.GetNetlinkSocketAt(n.netlinkAt(), netns.None(), unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("open ipset netlink in %s: %w", n, err)
	}
	tv := unix.NsecToTimeval(int64(10e9))
	if err := s.SetReceiveTimeout(&tv); err != nil {
		s.Close()
		return nil, fmt.Errorf("open ipset netlink in %s: %w", n, err)
	}
	return &IPSets{ns: n, sock: s}, nil
}

// Close releases the socket.
func (s *IPSets) Close() {
	if s != nil && s.sock != nil {
		s.sock.Close()
	}
}

// ipsetErr names ipset's private error numbers; others are errnos.
func ipsetErr(err error) error {
	var errno syscall.Errno
	if errors.As(err, &errno) && int(errno) >= nl.IPSET_ERR_PRIVATE {
		return nl.IPSetError(uintptr(errno))
	}
	return err
}

func (s *IPSets) request(cmd int, flags int, attrs ...nl.NetlinkRequestData) ([][]byte, error) {
	req := nl.NewNetlinkRequest(cmd|(unix.NFNL_SUBSYS_IPSET<<8), flags)
	req.Sockets = map[int]*nl.SocketHandle{unix.NETLINK_NETFILTER: {Socket: s.sock, Seq: s.seq}}
	req.AddData(&nl.Nfgenmsg{NfgenFamily: unix.AF_INET, Version: nl.NFNETLINK_V0})
	req.AddData(nl.NewRtAttr(nl.IPSET_ATTR_PROTOCOL, nl.Uint8Attr(nl.IPSET_PROTOCOL)))
	for _, a := range attrs {
		req.AddData(a)
	}
	msgs, err := req.Execute(unix.NETLINK_NETFILTER, 0)
	s.seq = req.Seq
	return msgs, ipsetErr(err)
}

// ipsetRevision is the lowest revision of each type with what kdive
// uses, so older kernels load it too.
func ipsetRevision(spec IPSetSpec) (uint8, error) {
	switch spec.Type {
	case "hash:ip":
		return 1, nil
	case "hash:ip,port", "hash:ip,port,ip":
		if spec.SkbInfo {
			return 5, nil
		}
		return 1, nil
	case "hash:ip,port,net":
		return 2, nil
	case "bitmap:port":
		return 0, nil
	}
	return 0, fmt.Errorf("ipset type %q is not supported", spec.Type)
}

// Create creates a set. A set of that name that exists already is not an
// error when it has the same type; another type fails.
func (s *IPSets) Create(spec IPSetSpec) error {
	rev, err := ipsetRevision(spec)
	if err != nil {
		return fmt.Errorf("create ipset %s in %s: %w", spec.Name, s.ns, err)
	}
	data := nl.NewRtAttr(nl.IPSET_ATTR_DATA|int(nl.NLA_F_NESTED), nil)
	family := uint8(unix.AF_INET)
	if spec.Type == "bitmap:port" {
		family = unix.AF_UNSPEC
		data.AddChild(nl.NewRtAttr(nl.IPSET_ATTR_PORT_FROM|int(nl.NLA_F_NET_BYTEORDER), be16(spec.PortFrom)))
		data.AddChild(nl.NewRtAttr(nl.IPSET_ATTR_PORT_TO|int(nl.NLA_F_NET_BYTEORDER), be16(spec.PortTo)))
	}
	if spec.SkbInfo {
		data.AddChild(nl.NewRtAttr(nl.IPSET_ATTR_CADT_FLAGS|int(nl.NLA_F_NET_BYTEORDER), be32(nl.IPSET_FLAG_WITH_SKBINFO)))
	}
	_, err = s.request(nl.IPSET_CMD_CREATE, unix.NLM_F_REQUEST|unix.NLM_F_ACK|unix.NLM_F_CREATE,
		nl.NewRtAttr(nl.IPSET_ATTR_SETNAME, nl.ZeroTerminated(spec.Name)),
		nl.NewRtAttr(nl.IPSET_ATTR_TYPENAME, nl.ZeroTerminated(spec.Type)),
		nl.NewRtAttr(nl.IPSET_ATTR_REVISION, nl.Uint8Attr(rev)),
		nl.NewRtAttr(nl.IPSET_ATTR_FAMILY, nl.Uint8Attr(family)),
		data)
	if err != nil {
		return fmt.Errorf("create ipset %s (%s) in %s: %w", spec.Name, spec.Type, s.ns, err)
	}
	return nil
}

// Destroy removes a set; a missing one is not an error. A set still
// referenced by iptables rules cannot go (IPSET_ERR_REFERENCED / busy).
func (s *IPSets) Destroy(name string) error {
	_, err := s.request(nl.IPSET_CMD_DESTROY, unix.NLM_F_REQUEST|unix.NLM_F_ACK,
		nl.NewRtAttr(nl.IPSET_ATTR_SETNAME, nl.ZeroTerminated(name)))
	if err != nil && !errors.Is(err, syscall.ENOENT) {
		return fmt.Errorf("destroy ipset %s in %s: %w", name, s.ns, err)
	}
	return nil
}

// Add adds an element. With replace, an element that exists already has
// its extensions (skbmark) updated in place; without, it is an error.
func (s *IPSets) Add(set string, e IPSetEntry, replace bool) error {
	flags := unix.NLM_F_REQUEST | unix.NLM_F_ACK
	if !replace {
		flags |= unix.NLM_F_EXCL
	}
	if _, err := s.request(nl.IPSET_CMD_ADD, flags,
		nl.NewRtAttr(nl.IPSET_ATTR_SETNAME, nl.ZeroTerminated(set)), entryData(e)); err != nil {
		return fmt.Errorf("add %s to ipset %s in %s: %w", e, set, s.ns, err)
	}
	return nil
}

// Del removes an element; a missing one is not an error.
func (s *IPSets) Del(set string, e IPSetEntry) error {
	if _, err := s.request(nl.IPSET_CMD_DEL, unix.NLM_F_REQUEST|unix.NLM_F_ACK,
		nl.NewRtAttr(nl.IPSET_ATTR_SETNAME, nl.ZeroTerminated(set)), entryData(e)); err != nil {
		return fmt.Errorf("delete %s from ipset %s in %s: %w", e, set, s.ns, err)
	}
	return nil
}

func entryData(e IPSetEntry) *nl.RtAttr {
	data := nl.NewRtAttr(nl.IPSET_ATTR_DATA|int(nl.NLA_F_NESTED), nil)
	if e.IP.IsValid() {
		data.AddChild(ipAttr(nl.IPSET_ATTR_IP, e.IP))
	}
	if e.Port != 0 || e.Proto != "" {
		data.AddChild(nl.NewRtAttr(nl.IPSET_ATTR_PORT|int(nl.NLA_F_NET_BYTEORDER), be16(e.Port)))
	}
	if e.Proto != "" {
		data.AddChild(nl.NewRtAttr(nl.IPSET_ATTR_PROTO, nl.Uint8Attr(ipProtoNumber(e.Proto))))
	}
	if e.IP2.IsValid() {
		data.AddChild(ipAttr(nl.IPSET_ATTR_IP2, e.IP2))
	}
	if e.Net2.IsValid() {
		data.AddChild(ipAttr(nl.IPSET_ATTR_IP2, e.Net2.Addr()))
		data.AddChild(nl.NewRtAttr(nl.IPSET_ATTR_CIDR2, nl.Uint8Attr(uint8(e.Net2.Bits()))))
	}
	if e.SkbMark != 0 {
		// mark in the upper half, its mask (all bits) in the lower.
		data.AddChild(nl.NewRtAttr(nl.IPSET_ATTR_SKBMARK|int(nl.NLA_F_NET_BYTEORDER),
			be64(uint64(e.SkbMark)<<32|0xffffffff)))
	}
	return data
}

func ipAttr(typ int, a netip.Addr) *nl.RtAttr {
	inner := nl.NewRtAttr(nl.IPSET_ATTR_IPADDR_IPV4|int(nl.NLA_F_NET_BYTEORDER), a.AsSlice())
	return nl.NewRtAttr(typ|int(nl.NLA_F_NESTED), inner.Serialize())
}

// List reads one set with its elements. A missing set fails with an error
// wrapping ErrNotFound.
func (s *IPSets) List(name string) (IPSet, error) {
	msgs, err := s.request(nl.IPSET_CMD_LIST, nl.GetIpsetFlags(nl.IPSET_CMD_LIST),
		nl.NewRtAttr(nl.IPSET_ATTR_SETNAME, nl.ZeroTerminated(name)))
	if errors.Is(err, syscall.ENOENT) {
		return IPSet{}, fmt.Errorf("list ipset %s in %s: %w", name, s.ns, ErrNotFound)
	}
	if err != nil {
		return IPSet{}, fmt.Errorf("list ipset %s in %s: %w", name, s.ns, err)
	}
	sets, err := parseIPSets(msgs)
	if err != nil {
		return IPSet{}, fmt.Errorf("list ipset %s in %s: %w", name, s.ns, err)
	}
	for _, set := range sets {
		if set.Name == name {
			return set, nil
		}
	}
	return IPSet{}, fmt.Errorf("list ipset %s in %s: %w", name, s.ns, ErrNotFound)
}

// ListAll reads every set of the namespace with its elements.
func (s *IPSets) ListAll() ([]IPSet, error) {
	msgs, err := s.request(nl.IPSET_CMD_LIST, nl.GetIpsetFlags(nl.IPSET_CMD_LIST))
	if err != nil {
		return nil, fmt.Errorf("list ipsets in %s: %w", s.ns, err)
	}
	sets, err := parseIPSets(msgs)
	if err != nil {
		return nil, fmt.Errorf("list ipsets in %s: %w", s.ns, err)
	}
	return sets, nil
}

// parseIPSets merges a dump's messages (a big set spans several) into sets.
func parseIPSets(msgs [][]byte) ([]IPSet, error) {
	var out []IPSet
	index := map[string]int{}
	for _, m := range msgs {
		if len(m) < nl.SizeofNfgenmsg {
			continue
		}
		attrs, err := parseAttrs(m[nl.SizeofNfgenmsg:])
		if err != nil {
			return nil, fmt.Errorf("parse ipset message: %w", err)
		}
		var set IPSet
		var entries []IPSetEntry
		for _, a := range attrs {
			switch attrType(a) {
			case nl.IPSET_ATTR_SETNAME:
				set.Name = attrString(a.Value)
			case nl.IPSET_ATTR_TYPENAME:
				set.Type = attrString(a.Value)
			case nl.IPSET_ATTR_DATA:
				set.SkbInfo = headerHasSkbInfo(a.Value)
			case nl.IPSET_ATTR_ADT:
				es, err := parseIPSetADT(a.Value)
				if err != nil {
					return nil, err
				}
				entries = append(entries, es...)
			}
		}
		if set.Name == "" {
			continue
		}
		i, ok := index[set.Name]
		if !ok {
			i = len(out)
			index[set.Name] = i
			out = append(out, IPSet{Name: set.Name})
		}
		if set.Type != "" {
			out[i].Type = set.Type
		}
		out[i].SkbInfo = out[i].SkbInfo || set.SkbInfo
		out[i].Entries = append(out[i].Entries, entries...)
	}
	return out, nil
}

func headerHasSkbInfo(b []byte) bool {
	attrs, err := parseAttrs(b)
	if err != nil {
		return false
	}
	for _, a := range attrs {
		if attrType(a) == nl.IPSET_ATTR_CADT_FLAGS && len(a.Value) == 4 {
			return binary.BigEndian.Uint32(a.Value)&nl.IPSET_FLAG_WITH_SKBINFO != 0
		}
	}
	return false
}

func parseIPSetADT(b []byte) ([]IPSetEntry, error) {
	attrs, err := parseAttrs(b)
	if err != nil {
		return nil, fmt.Errorf("parse ipset elements: %w", err)
	}
	var out []IPSetEntry
	for _, a := range attrs {
		if attrType(a) != nl.IPSET_ATTR_DATA {
			continue
		}
		e, err := parseIPSetEntry(a.Value)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, nil
}

func parseIPSetEntry(b []byte) (IPSetEntry, error) {
	attrs, err := parseAttrs(b)
	if err != nil {
		return IPSetEntry{}, fmt.Errorf("parse ipset element: %w", err)
	}
	var e IPSetEntry
	var proto uint8
	var hasProto bool
	var cidr2 int = -1
	for _, a := range attrs {
		switch attrType(a) {
		case nl.IPSET_ATTR_IP:
			e.IP = nestedAddr(a.Value)
		case nl.IPSET_ATTR_IP2:
			e.IP2 = nestedAddr(a.Value)
		case nl.IPSET_ATTR_CIDR2:
			if len(a.Value) > 0 {
				cidr2 = int(a.Value[0])
			}
		case nl.IPSET_ATTR_PORT:
			if len(a.Value) == 2 {
				e.Port = binary.BigEndian.Uint16(a.Value)
			}
		case nl.IPSET_ATTR_PROTO:
			if len(a.Value) > 0 {
				proto, hasProto = a.Value[0], true
			}
		case nl.IPSET_ATTR_SKBMARK:
			if len(a.Value) == 8 {
				e.SkbMark = uint32(binary.BigEndian.Uint64(a.Value) >> 32)
			}
		}
	}
	if hasProto {
		e.Proto = ipProtoName(proto)
	}
	if cidr2 >= 0 && e.IP2.IsValid() {
		e.Net2, e.IP2 = netip.PrefixFrom(e.IP2, cidr2), netip.Addr{}
	}
	return e, nil
}

func nestedAddr(b []byte) netip.Addr {
	attrs, err := parseAttrs(b)
	if err != nil {
		return netip.Addr{}
	}
	for _, a := range attrs {
		if attrType(a) == nl.IPSET_ATTR_IPADDR_IPV4 {
			if addr, ok := netip.AddrFromSlice(a.Value); ok {
				return addr
			}
		}
	}
	return netip.Addr{}
}

func ipProtoNumber(p string) uint8 {
	switch p {
	case "tcp":
		return unix.IPPROTO_TCP
	case "udp":
		return unix.IPPROTO_UDP
	case "sctp":
		return unix.IPPROTO_SCTP
	}
	return 0
}

func ipProtoName(p uint8) string {
	switch p {
	case unix.IPPROTO_TCP:
		return "tcp"
	case unix.IPPROTO_UDP:
		return "udp"
	case unix.IPPROTO_SCTP:
		return "sctp"
	}
	return strconv.Itoa(int(p))
}

func be16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }
func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
func be64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

func attrType(a syscall.NetlinkRouteAttr) int { return int(a.Attr.Type & nl.NLA_TYPE_MASK) }

// parseAttrs is nl.ParseRouteAttr without its panic on a last attribute
// whose length is not a multiple of 4 (the kernel pads; a broken message
// must be an error, not a crash).
func parseAttrs(b []byte) ([]syscall.NetlinkRouteAttr, error) {
	if r := len(b) % 4; r != 0 {
		b = append(b[:len(b):len(b)], make([]byte, 4-r)...)
	}
	return nl.ParseRouteAttr(b)
}

// attrString is a NUL-terminated string attribute (nl.BytesToString
// panics without the NUL).
func attrString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}
