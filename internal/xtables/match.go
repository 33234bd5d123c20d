package xtables

import (
	"net/netip"
	"strings"

	"github.com/kdive/kdive/internal/kernel"
)

// Tracing: how a rule's matches judge the first packet of a connection.
// Each mode walks its own chains (and the IPVS mode its ipsets and
// virtual servers) and applies the targets; whether a rule matches is
// decided here, for both.

// Packet is the first packet of a connection as the rules see it.
type Packet struct {
	Src, Dst netip.Addr
	Proto    string // "tcp", "udp" or "sctp"
	DPort    uint16
	Mark     uint32
	// DNAT: its destination was translated (conntrack state DNAT). The
	// packet is always NEW.
	DNAT bool
}

// Context is what matches consult besides the packet.
type Context interface {
	// Local says a is one of the node's addresses (-m addrtype LOCAL).
	Local(a netip.Addr) bool
	// IPSet is the type and entries of the named ipset (-m set, -j SET);
	// ok is false when there is none.
	IPSet(name string) (typ string, entries []kernel.IPSetEntry, ok bool)
}

// Matched says whether a rule matches a packet.
type Matched int

const (
	NoMatch Matched = iota
	Matches
	// MatchesSometimes: by chance (-m statistic) or when the client was
	// seen before (-m recent --rcheck).
	MatchesSometimes
)

// Match says whether the rule's matches take p.
func (r *Rule) Match(p *Packet, c Context) Matched {
	if r.Proto != "" && r.Proto != p.Proto || r.DPort != 0 && r.DPort != p.DPort {
		return NoMatch
	}
	if r.Dst.IsValid() && !r.Dst.Contains(p.Dst) {
		return NoMatch
	}
	if r.Src.IsValid() && r.Src.Contains(p.Src) == r.NotSrc {
		return NoMatch
	}
	if r.SrcLocal && !c.Local(p.Src) || r.DstLocal && !c.Local(p.Dst) {
		return NoMatch
	}
	if r.Mark != 0 && (p.Mark&r.Mark == r.Mark) == r.NotMark {
		return NoMatch
	}
	if r.CtState != 0 && r.CtState&p.ctState() != 0 == r.NotCtState {
		return NoMatch
	}
	if r.Set != nil {
		if _, in := r.Set.Entry(p, c); in == r.Set.Not {
			return NoMatch
		}
	}
	if r.Recent != nil && !r.Recent.Set || r.Probability > 0 && r.Probability < 1 {
		return MatchesSometimes
	}
	return Matches
}

// ctState: the first packet of a connection is NEW, and DNAT once its
// destination was translated.
func (p *Packet) ctState() CtState {
	if p.DNAT {
		return CtNew | CtDNAT
	}
	return CtNew
}

// Entry is the entry of the set that p's fields named by the flags make
// (dst,dst,src: destination address, destination port, source address),
// as the kernel's set match finds it; ok is false when there is none.
func (m *SetMatch) Entry(p *Packet, c Context) (e kernel.IPSetEntry, ok bool) {
	typ, entries, ok := c.IPSet(m.Name)
	if !ok {
		return kernel.IPSetEntry{}, false
	}
	f := strings.Split(m.Flags, ",")
	for _, e := range entries {
		if entryMatches(typ, e, f, p) {
			return e, true
		}
	}
	return kernel.IPSetEntry{}, false
}

func entryMatches(typ string, e kernel.IPSetEntry, f []string, p *Packet) bool {
	addr := func(flag string) netip.Addr {
		if flag == "src" {
			return p.Src
		}
		return p.Dst
	}
	portOK := func(flag string) bool {
		return flag == "dst" && e.Proto == p.Proto && e.Port == p.DPort
	}
	switch typ {
	case "bitmap:port":
		return len(f) == 1 && f[0] == "dst" && e.Port == p.DPort
	case "hash:ip":
		return e.IP == addr(f[0])
	case "hash:ip,port":
		return len(f) == 2 && e.IP == addr(f[0]) && portOK(f[1])
	case "hash:ip,port,ip":
		return len(f) == 3 && e.IP == addr(f[0]) && portOK(f[1]) && e.IP2 == addr(f[2])
	case "hash:ip,port,net":
		return len(f) == 3 && e.IP == addr(f[0]) && portOK(f[1]) && e.Net2.Contains(addr(f[2]))
	}
	return false
}
