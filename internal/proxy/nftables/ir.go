package nftables

import (
	"bytes"
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kdive/kdive/internal/kernel/nft"
	"github.com/kdive/kdive/internal/model"
)

// The table kdive owns. Nothing outside it is ever read or written.
const (
	Family = "ip"
	Table  = "kdive-proxy"
	// MasqueradeMark is the packet-mark bit that asks nat-postrouting to
	// masquerade (upstream kube-proxy's 0x4000).
	MasqueradeMark = 0x4000
)

// Ruleset is the rendered table as Go values: what Render produces, what
// Sync programs, what Trace interprets and what `kdive show lb` prints.
// String gives the exact nft text. Chains and sets record the service port
// (and endpoint) they exist for; shared ones have a zero Service.
type Ruleset struct {
	Chains map[string]*Chain
	Sets   map[string]*Set
	// LocalIPs are the node's own addresses, which `fib saddr type local`
	// matches (used by Trace; not part of the table).
	LocalIPs []netip.Addr

	glob  globals
	ports map[model.ServicePortName]*fragment
	hints map[string]int // set sizes expected by Render
}

// Hook makes a chain a base chain.
type Hook struct {
	Type     string // "nat"
	Hook     string // "prerouting", "output", "postrouting"
	Priority int
}

func (h *Hook) String() string {
	return fmt.Sprintf("type %s hook %s priority %s; policy accept;", h.Type, h.Hook, h.priority())
}

// priority is the hook's priority as nft names it.
func (h *Hook) priority() string {
	switch {
	case h.Hook == "prerouting" && h.Priority == -100:
		return "dstnat"
	case h.Hook == "postrouting" && h.Priority == 100:
		return "srcnat"
	}
	return strconv.Itoa(h.Priority)
}

// object is the chain for the nft door (without its rules).
func (c *Chain) object() *nft.Chain {
	o := &nft.Chain{Name: c.Name}
	if h := c.Hook; h != nil {
		o.Type, o.Hook, o.Priority, o.Policy = h.Type, h.Hook, h.priority(), "accept"
	}
	return o
}

// Chain is a chain of rules.
type Chain struct {
	Name  string
	Hook  *Hook // nil for a regular chain
	Rules []Rule
	// Service and Endpoint say which service port (and endpoint) the
	// chain exists for; zero for chains shared by many.
	Service  model.ServicePortName
	Endpoint netip.AddrPort

	refs int // users of a shared chain
}

// SetKind is the type of a set or map, which decides its key and value.
type SetKind uint8

const (
	// ServiceVerdicts: `address . protocol . port : verdict`, one element
	// per service address (service-ips, firewall-ips).
	ServiceVerdicts SetKind = iota + 1
	// EndpointBuckets: `address . protocol . port . bucket : endpoint
	// address . port`, the load-balancing maps.
	EndpointBuckets
	// AddrPairs: `address . address` (hairpin).
	AddrPairs
	// Prefixes: an interval set of addresses (cluster-cidrs).
	Prefixes
	// Clients: client addresses added at run time, with a timeout
	// (session affinity).
	Clients
)

// Set is a named set or map.
type Set struct {
	Name string
	Kind SetKind
	// Timeout (seconds) of a Clients set.
	Timeout int
	// Service and Endpoint say which service port (and endpoint) a
	// per-service set exists for; zero for shared sets.
	Service  model.ServicePortName
	Endpoint netip.AddrPort

	elems map[mkey]*slot
	refs  int
}

// IsMap says whether elements carry values.
func (s *Set) IsMap() bool { return s.Kind == ServiceVerdicts || s.Kind == EndpointBuckets }

// object is the set or map for the nft door (without its elements).
func (s *Set) object() nft.Object {
	switch s.Kind {
	case ServiceVerdicts:
		return &nft.Map{Name: s.Name, Type: "ipv4_addr . inet_proto . inet_service : verdict"}
	case EndpointBuckets:
		// nft 1.0.6 cannot name numgen in typeof; meta length is a
		// 32-bit integer like numgen's result.
		return &nft.Map{Name: s.Name, TypeOf: "ip daddr . meta l4proto . th dport . meta length : ip daddr . th dport"}
	case AddrPairs:
		return &nft.Set{Name: s.Name, Type: "ipv4_addr . ipv4_addr"}
	case Prefixes:
		return &nft.Set{Name: s.Name, Type: "ipv4_addr", Flags: []string{"interval"}}
	case Clients:
		return &nft.Set{Name: s.Name, Type: "ipv4_addr", Flags: []string{"dynamic", "timeout"}, Timeout: time.Duration(s.Timeout) * time.Second}
	}
	return &nft.Set{Name: s.Name, Type: "invalid"}
}

func (s *Set) keyword() string {
	if s.IsMap() {
		return "map"
	}
	return "set"
}

// Len is the number of elements.
func (s *Set) Len() int { return len(s.elems) }

// Lookup returns the element with key k.
func (s *Set) Lookup(k ElemKey) (Element, bool) {
	return s.lookup(k.m())
}

func (s *Set) lookup(k mkey) (Element, bool) {
	sl, ok := s.elems[k]
	if !ok {
		return Element{}, false
	}
	return sl.first.elem, true
}

// Elements are the set's elements, sorted by key.
func (s *Set) Elements() []Element {
	slots := s.sortedSlots()
	out := make([]Element, len(slots))
	for i, sl := range slots {
		out[i] = sl.first.elem
	}
	return out
}

func (s *Set) slots() []*slot {
	out := make([]*slot, 0, len(s.elems))
	for _, sl := range s.elems {
		out = append(out, sl)
	}
	return out
}

func (s *Set) sortedSlots() []*slot {
	out := s.slots()
	slices.SortFunc(out, func(a, b *slot) int { return a.key.compare(b.key) })
	return out
}

// ElemKey is an element's key; which fields are used depends on the set's
// kind.
type ElemKey struct {
	Addr   netip.Addr
	Proto  model.Protocol
	Port   uint16
	Bucket uint16
	// Addr2 is the second address of an AddrPairs key.
	Addr2 netip.Addr
	// Bits is the prefix length of a Prefixes key.
	Bits int8
}

// mkey is ElemKey as the sets index it: small and free of pointers, so
// that hashing is cheap and the collector has less to scan.
type mkey struct {
	addr, addr2  [4]byte
	port, bucket uint16
	proto        uint8
	bits         int8
}

func (k ElemKey) m() mkey {
	m := mkey{port: k.Port, bucket: k.Bucket, proto: protoNum(k.Proto), bits: k.Bits}
	if k.Addr.Is4() {
		m.addr = k.Addr.As4()
	}
	if k.Addr2.Is4() {
		m.addr2 = k.Addr2.As4()
	}
	return m
}

// compare orders keys by address, protocol, port, bucket, second address.
func (k mkey) compare(o mkey) int {
	if c := bytes.Compare(k.addr[:], o.addr[:]); c != 0 {
		return c
	}
	if k.proto != o.proto {
		return cmp.Compare(k.proto, o.proto)
	}
	if k.port != o.port {
		return cmp.Compare(k.port, o.port)
	}
	if k.bucket != o.bucket {
		return cmp.Compare(k.bucket, o.bucket)
	}
	if c := bytes.Compare(k.addr2[:], o.addr2[:]); c != 0 {
		return c
	}
	return cmp.Compare(k.bits, o.bits)
}

func protoNum(p model.Protocol) uint8 {
	switch p {
	case model.ProtocolTCP:
		return 6
	case model.ProtocolUDP:
		return 17
	case model.ProtocolSCTP:
		return 132
	case "":
		return 0
	}
	return 255
}

// Element is one element of a set or map, with the service port that put
// it there (and, in load-balancing maps, its bucket and endpoint).
type Element struct {
	Key ElemKey
	// Verdict is the value in a ServiceVerdicts map.
	Verdict Verdict
	// Endpoint is the value in an EndpointBuckets map.
	Endpoint netip.AddrPort
	// Service is the service port the element is for (zero for shared).
	Service model.ServicePortName
}

// keyString renders the key the way nft reads it.
func (e Element) keyString(kind SetKind) string { return string(e.appendKey(nil, kind)) }

// text renders the element with its value as nft writes it in a set of
// that kind.
func (e Element) text(kind SetKind) string { return e.object(&Set{Kind: kind}).String() }

// object is the element of set s for the nft door: its key, and in a
// verdict map a comment naming the service port (elemComment) and the
// verdict, in an endpoint map the endpoint.
func (e Element) object(s *Set) *nft.Element {
	o := &nft.Element{Key: []string{string(e.appendKey(nil, s.Kind))}}
	if !s.IsMap() {
		o.Set = s.Name
		return o
	}
	o.Map = s.Name
	switch s.Kind {
	case ServiceVerdicts:
		o.Comment = elemComment(e.Service)
		o.Value = []string{e.Verdict.String()}
	case EndpointBuckets:
		o.Value = []string{e.Endpoint.Addr().String(), strconv.Itoa(int(e.Endpoint.Port()))}
	}
	return o
}

func (e Element) appendKey(b []byte, kind SetKind) []byte {
	k := e.Key
	switch kind {
	case ServiceVerdicts, EndpointBuckets:
		b = k.Addr.AppendTo(b)
		b = append(b, " . "...)
		b = append(b, proto(k.Proto)...)
		b = append(b, " . "...)
		b = strconv.AppendUint(b, uint64(k.Port), 10)
		if kind == EndpointBuckets {
			b = append(b, " . "...)
			b = strconv.AppendUint(b, uint64(k.Bucket), 10)
		}
		return b
	case AddrPairs:
		b = k.Addr.AppendTo(b)
		b = append(b, " . "...)
		return k.Addr2.AppendTo(b)
	case Prefixes:
		return netip.PrefixFrom(k.Addr, int(k.Bits)).AppendTo(b)
	}
	return k.Addr.AppendTo(b)
}

func proto(p model.Protocol) string {
	switch p {
	case model.ProtocolTCP:
		return "tcp"
	case model.ProtocolUDP:
		return "udp"
	case model.ProtocolSCTP:
		return "sctp"
	}
	return strings.ToLower(string(p))
}

// slot holds the claims of service ports on one key; the first claim (the
// smallest port name) is the element in the kernel. Several claims on one
// key happen when ports share a hairpin pair, or when services conflict
// (two claiming one external IP and port).
type slot struct {
	key   mkey
	first claim
	more  []claim // rare: other claims, sorted by owner
}

type claim struct {
	owner *model.ServicePortName // nil for the ruleset's own elements
	elem  Element
}

func (c claim) ownerIs(o *model.ServicePortName) bool {
	return c.owner == o || c.owner != nil && o != nil && *c.owner == *o
}

func ownerCmp(a, b *model.ServicePortName) int {
	switch {
	case a == nil || b == nil:
		return cmp.Compare(boolInt(a != nil), boolInt(b != nil))
	}
	return a.Compare(*b)
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// has says whether owner claims the slot.
func (sl *slot) has(o *model.ServicePortName) bool {
	return sl.first.ownerIs(o) || slices.ContainsFunc(sl.more, func(c claim) bool { return c.ownerIs(o) })
}

// add inserts a claim in owner order.
func (sl *slot) add(c claim) {
	if ownerCmp(c.owner, sl.first.owner) < 0 {
		c, sl.first = sl.first, c
	}
	i, _ := slices.BinarySearchFunc(sl.more, c, func(a, b claim) int { return ownerCmp(a.owner, b.owner) })
	sl.more = slices.Insert(sl.more, i, c)
}

// remove drops owner's claim; it reports whether claims are left.
func (sl *slot) remove(o *model.ServicePortName) bool {
	if sl.first.ownerIs(o) {
		if len(sl.more) == 0 {
			return false
		}
		sl.first = sl.more[0]
		sl.more = slices.Delete(sl.more, 0, 1)
		return true
	}
	sl.more = slices.DeleteFunc(sl.more, func(c claim) bool { return c.ownerIs(o) })
	return true
}
