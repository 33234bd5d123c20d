package iptables

import (
	"github.com/kdive/kdive/internal/proxy"
	"net/netip"
	"strings"
)

// Trace follows the first packet of a connection through the rules the way
// the kernel does: nat PREROUTING (or OUTPUT for the node's own packets),
// the routing decision, filter INPUT or FORWARD (OUTPUT, then INPUT when
// the node talks to itself), and nat POSTROUTING. Where a rule matches only
// sometimes (`-m statistic`, `-m recent --rcheck`) it follows both ways, so
// the result names every endpoint the packet can reach, each with whether
// it is masqueraded. It reads only the Ruleset: built-in chains hold just
// kdive's jumps, and their policies are ACCEPT.
func Trace(rs *Ruleset, p proxy.Packet) proxy.Result {
	t := &tracer{rs: rs}
	s := state{src: p.Src, dst: p.Dst, proto: strings.ToLower(string(p.Proto)), dport: uint16(p.Port)}
	var ends []end
	if p.FromNode {
		// A local process: nat OUTPUT, filter OUTPUT, nat POSTROUTING,
		// and back in through filter INPUT when the destination is local.
		ss := t.stage(TableNAT, "OUTPUT", []state{s}, &ends)
		ss = t.stage(TableFilter, "OUTPUT", ss, &ends)
		ss = t.stage(TableNAT, "POSTROUTING", ss, &ends)
		var local, out []state
		for _, s := range ss {
			if t.local(s.dst) {
				local = append(local, s)
			} else {
				out = append(out, s)
			}
		}
		out = append(out, t.stage(TableFilter, "INPUT", local, &ends)...)
		for _, s := range out {
			ends = append(ends, end{s, flowAccept})
		}
	} else {
		ss := t.stage(TableNAT, "PREROUTING", []state{s}, &ends)
		var local, fwd []state
		for _, s := range ss {
			if t.local(s.dst) {
				local = append(local, s)
			} else {
				fwd = append(fwd, s)
			}
		}
		out := t.stage(TableFilter, "INPUT", local, &ends)
		fwd = t.stage(TableFilter, "FORWARD", fwd, &ends)
		out = append(out, t.stage(TableNAT, "POSTROUTING", fwd, &ends)...)
		for _, s := range out {
			ends = append(ends, end{s, flowAccept})
		}
	}
	return result(ends)
}

// state is the packet as the rules see it.
type state struct {
	src, dst netip.Addr
	proto    string
	dport    uint16
	mark     uint32
	dnat     bool // its destination was DNATed (conntrack state DNAT)
	masq     bool
}

// flow is how a chain walk ended.
type flow int

const (
	flowReturn flow = iota // fell off or RETURNed: the caller goes on
	flowAccept
	flowDrop
	flowReject
	flowNAT // DNAT or MASQUERADE: the nat table is done for this hook
)

type end struct {
	state
	flow flow
}

type tracer struct {
	rs *Ruleset
}

func (t *tracer) local(a netip.Addr) bool {
	if loopback.Contains(a) {
		return true
	}
	for _, ip := range t.rs.LocalIPs {
		if ip == a {
			return true
		}
	}
	return false
}

// stage runs a built-in chain for each state: packets it passes on are
// returned; DROPs and REJECTs are added to final.
func (t *tracer) stage(table Table, hook string, in []state, final *[]end) []state {
	var out []state
	for _, s := range in {
		c := t.rs.Chain(table, hook)
		if c == nil {
			out = append(out, s)
			continue
		}
		for _, e := range t.walk(c, 0, s, 0) {
			switch e.flow {
			case flowDrop, flowReject:
				*final = append(*final, e)
			default:
				out = append(out, e.state)
			}
		}
	}
	return out
}

// match says whether r matches: 1 yes, 0 no, 2 sometimes.
func (t *tracer) match(r *Rule, s state) int {
	if r.Proto != "" && r.Proto != s.proto || r.DPort != 0 && r.DPort != s.dport {
		return 0
	}
	if r.Dst.IsValid() && !r.Dst.Contains(s.dst) {
		return 0
	}
	if r.Src.IsValid() && r.Src.Contains(s.src) == r.NotSrc {
		return 0
	}
	if r.SrcType == "LOCAL" && !t.local(s.src) || r.DstType == "LOCAL" && !t.local(s.dst) {
		return 0
	}
	if r.Mark != 0 && (s.mark&r.Mark == r.Mark) == r.NotMark {
		return 0
	}
	if r.CtState != "" && ctMatch(r.CtState, s) == r.NotCtState {
		return 0
	}
	sometimes := r.Recent != nil && !r.Recent.Set || r.Probability > 0 && r.Probability < 1
	if sometimes {
		return 2
	}
	return 1
}

// ctMatch: the first packet of a connection is NEW, and DNAT once its
// destination was translated.
func ctMatch(states string, s state) bool {
	for _, st := range strings.Split(states, ",") {
		if st == "NEW" || st == "DNAT" && s.dnat {
			return true
		}
	}
	return false
}

const maxDepth = 32

// walk runs chain c from rule i.
func (t *tracer) walk(c *Chain, i int, s state, depth int) []end {
	if depth > maxDepth {
		return []end{{s, flowDrop}} // a loop: the kernel refuses those
	}
	var ends []end
	for ; i < len(c.Rules); i++ {
		r := &c.Rules[i]
		switch t.match(r, s) {
		case 0:
			continue
		case 2:
			ends = append(ends, t.walk(c, i+1, s, depth)...)
		}
		switch r.Jump {
		case "":
			continue
		case targetMark:
			s.mark = s.mark | r.MarkOr ^ r.MarkXor
			continue
		case targetReturn:
			return append(ends, end{s, flowReturn})
		case targetAccept:
			return append(ends, end{s, flowAccept})
		case targetDrop:
			return append(ends, end{s, flowDrop})
		case targetReject:
			return append(ends, end{s, flowReject})
		case targetDNAT:
			s.dst, s.dport, s.dnat = r.Endpoint.Addr(), r.Endpoint.Port(), true
			return append(ends, end{s, flowNAT})
		case targetMasquerade:
			s.masq = true
			return append(ends, end{s, flowNAT})
		}
		sub := t.rs.Chain(c.Table, r.Jump)
		if sub == nil {
			return append(ends, end{s, flowDrop}) // restore would refuse it
		}
		for _, e := range t.walk(sub, 0, s, depth+1) {
			if e.flow == flowReturn {
				ends = append(ends, t.walk(c, i+1, e.state, depth)...)
			} else {
				ends = append(ends, e)
			}
		}
		return ends
	}
	return append(ends, end{s, flowReturn})
}

// result sums up the ways a packet went: DNAT to the endpoints it can
// reach, else DROP, REJECT or ACCEPT.
func result(ends []end) proxy.Result {
	eps := map[string]bool{}
	var drop, reject bool
	for _, e := range ends {
		switch {
		case e.flow == flowDrop:
			drop = true
		case e.flow == flowReject:
			reject = true
		case e.dnat:
			k := netip.AddrPortFrom(e.dst, e.dport).String()
			eps[k] = eps[k] || e.masq
		}
	}
	switch {
	case len(eps) > 0:
		return proxy.Result{Verdict: proxy.DNAT, Endpoints: eps}
	case drop:
		return proxy.Result{Verdict: proxy.DROP}
	case reject:
		return proxy.Result{Verdict: proxy.REJECT}
	}
	return proxy.Result{Verdict: proxy.ACCEPT}
}
