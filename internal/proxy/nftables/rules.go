package nftables

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/kdive/kdive/internal/model"
)

// Rule is matches followed by one statement.
type Rule struct {
	Match []Match
	Stmt  Stmt
}

func (r Rule) String() string {
	var b strings.Builder
	for _, m := range r.Match {
		b.WriteString(m.String())
		b.WriteByte(' ')
	}
	b.WriteString(r.Stmt.String())
	return b.String()
}

// Match is a condition of a rule. The set of matches is closed: Trace
// interprets each of them.
type Match interface {
	String() string
	isMatch()
}

// SaddrInSet is `ip saddr @set` (or `!=`).
type SaddrInSet struct {
	Set string
	Not bool
}

// SaddrInPrefixes is `ip saddr 10.0.0.0/8` or `ip saddr { a, b }` (or `!=`).
type SaddrInPrefixes struct {
	Prefixes []netip.Prefix
	Not      bool
}

// FibSaddrLocal is `fib saddr type local`: the source is one of the
// node's own addresses.
type FibSaddrLocal struct{}

// CtDNAT is `ct status dnat`: the connection was destination-NATed.
type CtDNAT struct{}

// AddrPairInSet is `ip saddr . ip daddr @set`.
type AddrPairInSet struct{ Set string }

// MarkUnset is `meta mark & mark == 0`.
type MarkUnset struct{ Mark uint32 }

// L4Proto is `meta l4proto tcp`.
type L4Proto struct{ Proto model.Protocol }

func (SaddrInSet) isMatch()      {}
func (SaddrInPrefixes) isMatch() {}
func (FibSaddrLocal) isMatch()   {}
func (CtDNAT) isMatch()          {}
func (AddrPairInSet) isMatch()   {}
func (MarkUnset) isMatch()       {}
func (L4Proto) isMatch()         {}

func neq(not bool) string {
	if not {
		return "!= "
	}
	return ""
}

func (m SaddrInSet) String() string { return "ip saddr " + neq(m.Not) + "@" + m.Set }
func (m SaddrInPrefixes) String() string {
	if len(m.Prefixes) == 1 {
		return "ip saddr " + neq(m.Not) + m.Prefixes[0].String()
	}
	ps := make([]string, len(m.Prefixes))
	for i, p := range m.Prefixes {
		ps[i] = p.String()
	}
	return "ip saddr " + neq(m.Not) + "{ " + strings.Join(ps, ", ") + " }"
}
func (FibSaddrLocal) String() string   { return "fib saddr type local" }
func (CtDNAT) String() string          { return "ct status dnat" }
func (m AddrPairInSet) String() string { return "ip saddr . ip daddr @" + m.Set }
func (m MarkUnset) String() string     { return fmt.Sprintf("meta mark & 0x%08x == 0", m.Mark) }
func (m L4Proto) String() string       { return "meta l4proto " + proto(m.Proto) }

// Stmt is what a rule does once its matches hold. The set of statements is
// closed: Trace interprets each of them.
type Stmt interface {
	String() string
	isStmt()
}

// VerdictKind is what a verdict does.
type VerdictKind uint8

const (
	Accept VerdictKind = iota + 1
	Drop
	Return
	Jump
	Goto
)

// Verdict ends or redirects evaluation; it is also the value of a verdict
// map element.
type Verdict struct {
	Kind  VerdictKind
	Chain string // for Jump and Goto
}

func (v Verdict) String() string {
	switch v.Kind {
	case Accept:
		return "accept"
	case Drop:
		return "drop"
	case Return:
		return "return"
	case Jump:
		return "jump " + v.Chain
	case Goto:
		return "goto " + v.Chain
	}
	return "invalid-verdict"
}

// ServiceVMap is `ip daddr . meta l4proto . th dport vmap @map`.
type ServiceVMap struct{ Map string }

// DNATMap is `dnat ip to ip daddr . meta l4proto . th dport . numgen
// random mod N map @map`: one of N buckets, each an endpoint.
type DNATMap struct {
	Map string
	N   int
}

// DNAT is `dnat to ip:port` (after an L4Proto match).
type DNAT struct{ To netip.AddrPort }

// NumgenVMap is `numgen random mod N vmap { 0 : goto a, ... }`.
type NumgenVMap struct{ Chains []string }

// SetMark is `meta mark set meta mark | mark` (or `^` with Xor).
type SetMark struct {
	Mark uint32
	Xor  bool
}

// Masquerade is `masquerade fully-random`.
type Masquerade struct{}

// Reject is `reject` (ICMP port unreachable) or, with TCPReset, `reject
// with tcp reset` (after an L4Proto tcp match).
type Reject struct{ TCPReset bool }

// UpdateSaddr is `update @set { ip saddr }`: adds the client, or
// refreshes its timeout.
type UpdateSaddr struct{ Set string }

func (Verdict) isStmt()     {}
func (ServiceVMap) isStmt() {}
func (DNATMap) isStmt()     {}
func (DNAT) isStmt()        {}
func (NumgenVMap) isStmt()  {}
func (SetMark) isStmt()     {}
func (Masquerade) isStmt()  {}
func (Reject) isStmt()      {}
func (UpdateSaddr) isStmt() {}

func (s ServiceVMap) String() string {
	return "ip daddr . meta l4proto . th dport vmap @" + s.Map
}
func (s DNATMap) String() string {
	return fmt.Sprintf("dnat ip to ip daddr . meta l4proto . th dport . numgen random mod %d map @%s", s.N, s.Map)
}
func (s DNAT) String() string { return "dnat to " + s.To.String() }
func (s NumgenVMap) String() string {
	parts := make([]string, len(s.Chains))
	for i, c := range s.Chains {
		parts[i] = fmt.Sprintf("%d : goto %s", i, c)
	}
	return fmt.Sprintf("numgen random mod %d vmap { %s }", len(s.Chains), strings.Join(parts, ", "))
}
func (s SetMark) String() string {
	op := "|"
	if s.Xor {
		op = "^"
	}
	return fmt.Sprintf("meta mark set meta mark %s 0x%08x", op, s.Mark)
}
func (Masquerade) String() string { return "masquerade fully-random" }
func (s Reject) String() string {
	if s.TCPReset {
		return "reject with tcp reset"
	}
	return "reject"
}
func (s UpdateSaddr) String() string { return "update @" + s.Set + " { ip saddr }" }
