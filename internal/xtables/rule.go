package xtables

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Rule is one iptables rule as typed values: the matches kdive writes
// (the iptables mode's and the IPVS mode's), and its target. Both modes
// build their rules as Rules, print them (AppendSave, WriteKubeProxy),
// read iptables-save back into them (ParseRule) and trace packets through
// them (Match), so a new match is taught here once.
//
// A zero field is no match. The match modules are printed in the order
// of the Module constants unless Order says otherwise.
type Rule struct {
	// Src and Dst match addresses (-s, -d; zero: any); NotSrc negates Src.
	Src, Dst netip.Prefix
	// Proto is -p: "tcp", "udp" or "sctp"; empty for any. The protocol's
	// match module (-m tcp, which DPort needs) comes with it unless
	// BareProto.
	Proto string
	// Comment is -m comment.
	Comment string
	// Recent is `-m recent` (session affinity); nil for none.
	Recent *Recent
	// Probability is `-m statistic --mode random --probability`; 0 is none.
	Probability float64
	// Set is `-m set --match-set`; nil for none.
	Set *SetMatch

	// Jump is the target: a chain, or ACCEPT, DROP, REJECT, RETURN, DNAT
	// (to ToDestination), MARK (MarkOr, then MarkXor), MASQUERADE (with
	// RandomFully) or SET (MapSet); empty for a rule that only counts.
	Jump          string
	ToDestination netip.AddrPort
	// MapSet is SET's `--map-set Name Flags --map-mark`: the packet's mark
	// becomes the skbmark of the entry it matches.
	MapSet *SetMatch

	// Mark matches `-m mark --mark Mark/Mark` (negated with NotMark); 0 is
	// no match.
	Mark uint32
	// MarkOr and MarkXor are MARK's: the mark becomes (mark|MarkOr)^MarkXor,
	// which is --set-xmark (MarkOr^MarkXor)/MarkOr, --or-mark MarkOr
	// without MarkXor, --xor-mark MarkXor without MarkOr.
	MarkOr, MarkXor uint32
	// DPort is the protocol module's --dport; 0 is any.
	DPort uint16
	// CtState matches `-m conntrack --ctstate` (negated with NotCtState);
	// 0 is no match.
	CtState CtState
	// Order is the order the match modules are written in when it is not
	// the usual one; zero for the usual.
	Order Order
	// SrcLocal and DstLocal are `-m addrtype --src-type LOCAL` and
	// `--dst-type LOCAL`.
	SrcLocal, DstLocal                     bool
	NotSrc, BareProto, NotMark, NotCtState bool
	RandomFully                            bool
}

// CtState is a set of conntrack states.
type CtState uint8

// The states, in the order iptables-save prints them.
const (
	CtInvalid CtState = 1 << iota
	CtNew
	CtRelated
	CtEstablished
	CtUntracked
	CtSNAT
	CtDNAT
)

var ctStateNames = []string{"INVALID", "NEW", "RELATED", "ESTABLISHED", "UNTRACKED", "SNAT", "DNAT"}

// String is the states as --ctstate takes them: "RELATED,ESTABLISHED".
func (c CtState) String() string { return string(c.append(nil)) }

func (c CtState) append(b []byte) []byte {
	first := true
	for i, n := range ctStateNames {
		if c&(1<<i) != 0 {
			if !first {
				b = append(b, ',')
			}
			b, first = append(b, n...), false
		}
	}
	return b
}

// parseCtState reads "RELATED,ESTABLISHED".
func parseCtState(s string) (CtState, error) {
	var c CtState
	for _, name := range strings.Split(s, ",") {
		i := slices.Index(ctStateNames, name)
		if i < 0 {
			return 0, fmt.Errorf("conntrack state %q", name)
		}
		c |= 1 << i
	}
	return c, nil
}

// Recent is session affinity: KUBE-SEP rules --set the client's address in
// the list Name, KUBE-SVC rules --rcheck it within Seconds.
type Recent struct {
	Name    string
	Set     bool
	Seconds int
}

// SetMatch is `-m set [!] --match-set Name Flags`: the packet's fields
// that Flags name ("dst,dst,src": destination address, destination port,
// source address) make an entry of the ipset Name.
type SetMatch struct {
	Name  string
	Flags string
	Not   bool
}

// Targets that are not chains.
const (
	Accept     = "ACCEPT"
	Drop       = "DROP"
	Reject     = "REJECT"
	Return     = "RETURN"
	DNAT       = "DNAT"
	Mark       = "MARK"
	Masquerade = "MASQUERADE"
	SetTarget  = "SET"
)

// Module is a match module (-m NAME) of a Rule.
type Module uint8

// The modules, in the usual order: the iptables mode's (upstream
// kube-proxy's), which most of the IPVS mode's rules keep too.
const (
	ModComment Module = iota + 1
	ModAddrType
	ModRecent
	ModStatistic
	ModProto // -m tcp, -m udp, -m sctp
	ModMark
	ModConntrack
	ModSet
	numModules = iota
)

// Order lists a rule's match modules in the order written, up to the
// first zero.
type Order [numModules]Module

// Equal compares rules by value.
func (r Rule) Equal(o Rule) bool {
	if !samePtr(r.Recent, o.Recent) || !samePtr(r.Set, o.Set) || !samePtr(r.MapSet, o.MapSet) {
		return false
	}
	r.Recent, o.Recent, r.Set, o.Set, r.MapSet, o.MapSet = nil, nil, nil, nil, nil, nil
	return r == o
}

func samePtr[T comparable](a, b *T) bool { return a == b || a != nil && b != nil && *a == *b }

// has says whether the rule uses module m.
func (r *Rule) has(m Module) bool {
	switch m {
	case ModComment:
		return r.Comment != ""
	case ModAddrType:
		return r.SrcLocal || r.DstLocal
	case ModRecent:
		return r.Recent != nil
	case ModStatistic:
		return r.Probability != 0
	case ModProto:
		return r.Proto != "" && !r.BareProto
	case ModMark:
		return r.Mark != 0
	case ModConntrack:
		return r.CtState != 0
	case ModSet:
		return r.Set != nil
	}
	return false
}

// modules are the rule's modules in the order they are written.
func (r *Rule) modules(buf *Order) []Module {
	if r.Order[0] != 0 {
		n := 0
		for n < len(r.Order) && r.Order[n] != 0 {
			n++
		}
		return r.Order[:n]
	}
	out := buf[:0]
	for m := Module(1); m <= numModules; m++ {
		if r.has(m) {
			out = append(out, m)
		}
	}
	return out
}

// NewMark is the packet mark after the rule's MARK target.
func (r *Rule) NewMark(mark uint32) uint32 { return mark | r.MarkOr ^ r.MarkXor }
