package iptables

import (
	"fmt"
	"strings"

	"github.com/kdive/kdive/internal/proxy"
)

// Explain follows p's first packet through the rules as Trace does and
// says, one line each and indented by depth: each chain entered, each
// rule that matched as iptables-save prints it, the chance of each
// random branch (-m statistic: the effective chance, not the rule's p),
// the DNAT, and what KUBE-POSTROUTING decides; then one result line per
// way the packet can go and the verdict. Affinity rules (-m recent
// --rcheck) are named but not followed: the lines are about a client the
// kernel has not seen yet.
func (in *Inspected) Explain(p proxy.Packet) []string {
	x := &explainer{in: in, t: &tracer{rs: in.rs}}
	x.add(0, "%s, iptables-%s", p, in.flavour)
	s := xstate{state{src: p.Src, dst: p.Dst, proto: strings.ToLower(string(p.Proto)), dport: uint16(p.Port)}, 1}
	var ends []xend
	route := func(ss []xstate) (local, other []xstate) {
		for _, s := range ss {
			if x.t.local(s.dst) {
				x.add(0, "routing: %s is this node's address", s.dst)
				local = append(local, s)
			} else {
				x.add(0, "routing: %s is not this node's address", s.dst)
				other = append(other, s)
			}
		}
		return local, other
	}
	if p.FromNode {
		ss := x.stage(TableNAT, "OUTPUT", []xstate{s}, &ends)
		ss = x.stage(TableFilter, "OUTPUT", ss, &ends)
		ss = x.stage(TableNAT, "POSTROUTING", ss, &ends)
		local, out := route(ss)
		out = append(out, x.stage(TableFilter, "INPUT", local, &ends)...)
		for _, s := range out {
			ends = append(ends, xend{s, flowAccept})
		}
	} else {
		ss := x.stage(TableNAT, "PREROUTING", []xstate{s}, &ends)
		local, fwd := route(ss)
		out := x.stage(TableFilter, "INPUT", local, &ends)
		fwd = x.stage(TableFilter, "FORWARD", fwd, &ends)
		out = append(out, x.stage(TableNAT, "POSTROUTING", fwd, &ends)...)
		for _, s := range out {
			ends = append(ends, xend{s, flowAccept})
		}
	}
	for _, e := range ends {
		x.add(0, "%s", e.String())
	}
	x.add(0, "verdict: %s", in.Trace(p))
	return x.lines
}

// xstate is a packet on one way through the rules, with its chance.
type xstate struct {
	state
	prob float64
}

type xend struct {
	xstate
	flow flow
}

func (e xend) String() string {
	var what string
	switch {
	case e.flow == flowDrop:
		what = "DROP"
	case e.flow == flowReject:
		what = "REJECT"
	case e.dnat && e.masq:
		what = fmt.Sprintf("DNAT to %s:%d, masqueraded (KUBE-MARK-MASQ set, KUBE-POSTROUTING MASQUERADE)", e.dst, e.dport)
	case e.dnat:
		what = fmt.Sprintf("DNAT to %s:%d, not masqueraded (source %s kept)", e.dst, e.dport, e.src)
	default:
		what = "ACCEPT, not translated"
	}
	return fmt.Sprintf("result (chance %s): %s", percent(e.prob), what)
}

func percent(p float64) string { return fmt.Sprintf("%.1f%%", 100*p) }

type explainer struct {
	in    *Inspected
	t     *tracer
	lines []string
}

func (x *explainer) add(depth int, format string, args ...any) {
	x.lines = append(x.lines, strings.Repeat("  ", depth)+fmt.Sprintf(format, args...))
}

// stage runs a built-in chain for each way the packet goes, as
// tracer.stage does.
func (x *explainer) stage(table Table, hook string, in []xstate, final *[]xend) []xstate {
	var out []xstate
	for _, s := range in {
		c := x.in.rs.Chain(table, hook)
		if c == nil {
			x.add(0, "%s %s: no kdive rules", table, hook)
			out = append(out, s)
			continue
		}
		if len(in) > 1 || s.prob < 1 {
			x.add(0, "%s %s, for %s -> %s:%d (chance %s):", table, hook, s.src, s.dst, s.dport, percent(s.prob))
		} else {
			x.add(0, "%s %s:", table, hook)
		}
		for _, e := range x.walk(c, 0, s, 1) {
			switch e.flow {
			case flowDrop, flowReject:
				*final = append(*final, e)
			default:
				out = append(out, e.xstate)
			}
		}
	}
	return out
}

// walk runs chain c from rule i, as tracer.walk does, saying what
// matches.
func (x *explainer) walk(c *Chain, i int, s xstate, depth int) []xend {
	if depth > 2*maxDepth {
		x.add(depth, "%s: too deep, a loop", c.Name)
		return []xend{{s, flowDrop}}
	}
	for ; i < len(c.Rules); i++ {
		r := &c.Rules[i]
		m := x.t.match(r, s.state)
		if m == 0 {
			continue
		}
		text := x.in.ruleText(c, i)
		if m == 2 && r.Recent != nil && !r.Recent.Set {
			x.add(depth, "%s  [affinity: only a client seen in the last %ds; not followed]", text, r.Recent.Seconds)
			continue
		}
		if m == 1 {
			x.add(depth, "%s", text)
			return x.take(c, i, s, depth)
		}
		taken := s
		taken.prob = s.prob * r.Probability
		s.prob -= taken.prob
		x.add(depth, "%s  [chance %s]", text, percent(taken.prob))
		ends := x.take(c, i, taken, depth)
		return append(ends, x.walk(c, i+1, s, depth)...)
	}
	return []xend{{s, flowReturn}}
}

// take applies rule i's target to s.
func (x *explainer) take(c *Chain, i int, s xstate, depth int) []xend {
	r := &c.Rules[i]
	switch r.Jump {
	case "":
		return x.walk(c, i+1, s, depth)
	case targetMark:
		s.mark = s.mark | r.MarkOr ^ r.MarkXor
		return x.walk(c, i+1, s, depth)
	case targetReturn:
		return []xend{{s, flowReturn}}
	case targetAccept:
		return []xend{{s, flowAccept}}
	case targetDrop:
		return []xend{{s, flowDrop}}
	case targetReject:
		return []xend{{s, flowReject}}
	case targetDNAT:
		s.dst, s.dport, s.dnat = r.Endpoint.Addr(), r.Endpoint.Port(), true
		x.add(depth+1, "DNAT to %s", r.Endpoint)
		return []xend{{s, flowNAT}}
	case targetMasquerade:
		s.masq = true
		x.add(depth+1, "MASQUERADE: the source becomes the outgoing interface's address")
		return []xend{{s, flowNAT}}
	}
	sub := x.in.rs.Chain(c.Table, r.Jump)
	if sub == nil {
		x.add(depth+1, "%s %s: no such chain", c.Table, r.Jump)
		return []xend{{s, flowDrop}}
	}
	x.add(depth+1, "%s %s%s:", sub.Table, sub.Name, chainNote(sub))
	n := len(x.lines)
	subEnds := x.walk(sub, 0, s, depth+2)
	if len(x.lines) == n {
		x.add(depth+2, "no rule matches")
	}
	var ends []xend
	for _, e := range subEnds {
		if e.flow == flowReturn {
			ends = append(ends, x.walk(c, i+1, e.xstate, depth)...)
		} else {
			ends = append(ends, e)
		}
	}
	return ends
}

// chainNote names a service chain's port (and a KUBE-SEP's endpoint).
func chainNote(c *Chain) string {
	if c.Service == nil {
		return ""
	}
	if ep := sepEndpoint(c); ep.IsValid() {
		return fmt.Sprintf(" (%s -> %s)", c.Service, ep)
	}
	return fmt.Sprintf(" (%s)", c.Service)
}
