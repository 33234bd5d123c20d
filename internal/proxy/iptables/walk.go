package iptables

import (
	"net/netip"
	"strings"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/proxy"
	"github.com/kdive/kdive/internal/xtables"
)

// walker follows the first packet of a connection through the rules the
// way the kernel does: nat PREROUTING (or OUTPUT for the node's own
// packets), the routing decision, filter INPUT or FORWARD (OUTPUT, then
// INPUT when the node talks to itself), and nat POSTROUTING. Where a rule
// matches only sometimes (`-m statistic`) it follows both ways, each with
// its chance, so the ends name every endpoint the packet can reach, each
// with whether it is masqueraded. It reads only the Ruleset: built-in
// chains hold just kdive's jumps, and their policies are ACCEPT.
//
// It is the one walk of the rules: Trace folds the ends into a verdict,
// Explain narrates the steps as they are taken, so the two cannot
// disagree about where a packet goes.
type walker struct {
	rs *Ruleset
	// followAffinity follows an affinity rule (-m recent --rcheck) both
	// ways too, as Trace does to name every endpoint a packet can reach;
	// without it the rule does not match, as for a client the kernel has
	// not seen yet, which is what Explain's lines are about.
	followAffinity bool
	// see, when set, is told each step as it is taken.
	see   func(step)
	steps int // how many were taken
}

// state is the packet as the rules see it, on one way through them.
type state struct {
	xtables.Packet
	masq bool
	prob float64 // the chance the packet goes this way
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

// end is one way the packet went.
type end struct {
	state
	flow flow
}

// stepKind says what a step is.
type stepKind int

const (
	stepStage    stepKind = iota // a built-in chain is entered (chain nil: kdive has none there)
	stepRoute                    // the routing decision: local says whether dst is the node's
	stepRule                     // a rule matched
	stepChance                   // a rule matched by chance (-m statistic): s.prob is the way that takes it
	stepAffinity                 // an affinity rule, not followed
	stepDNAT                     // the destination was translated
	stepMasq                     // the source will be masqueraded
	stepEnter                    // a jump into chain
	stepNoMatch                  // chain ended with no rule of it matching
	stepNoChain                  // a jump to a chain that does not exist
	stepTooDeep                  // chain nests too deep: a loop
)

// step is one thing the packet meets.
type step struct {
	kind  stepKind
	depth int // how many jumps below the built-in chain
	table Table
	hook  string // stepStage: the built-in chain's name
	chain *Chain // the chain of the rule, or the one entered
	rule  int    // the rule's index in chain
	s     state
	local bool // stepRoute
	// shared (stepStage): more than one way goes through the hook, or
	// this one only by chance.
	shared bool
}

func newState(p proxy.Packet) state {
	return state{Packet: xtables.Packet{Src: p.Src, Dst: p.Dst, Proto: strings.ToLower(string(p.Proto)), DPort: uint16(p.Port)}, prob: 1}
}

func (w *walker) emit(st step) {
	w.steps++
	if w.see != nil {
		w.see(st)
	}
}

// run walks p through every hook it meets and returns where it ends.
func (w *walker) run(p proxy.Packet) []end {
	s := newState(p)
	var ends []end
	if p.FromNode {
		// A local process: nat OUTPUT, filter OUTPUT, nat POSTROUTING,
		// and back in through filter INPUT when the destination is local.
		ss := w.stage(TableNAT, "OUTPUT", []state{s}, &ends)
		ss = w.stage(TableFilter, "OUTPUT", ss, &ends)
		ss = w.stage(TableNAT, "POSTROUTING", ss, &ends)
		local, out := w.route(ss)
		out = append(out, w.stage(TableFilter, "INPUT", local, &ends)...)
		for _, s := range out {
			ends = append(ends, end{s, flowAccept})
		}
	} else {
		ss := w.stage(TableNAT, "PREROUTING", []state{s}, &ends)
		local, fwd := w.route(ss)
		out := w.stage(TableFilter, "INPUT", local, &ends)
		fwd = w.stage(TableFilter, "FORWARD", fwd, &ends)
		out = append(out, w.stage(TableNAT, "POSTROUTING", fwd, &ends)...)
		for _, s := range out {
			ends = append(ends, end{s, flowAccept})
		}
	}
	return ends
}

// route is the routing decision: the ways to one of the node's own
// addresses, and the others.
func (w *walker) route(ss []state) (local, other []state) {
	for _, s := range ss {
		l := w.Local(s.Dst)
		w.emit(step{kind: stepRoute, s: s, local: l})
		if l {
			local = append(local, s)
		} else {
			other = append(other, s)
		}
	}
	return local, other
}

// Local says a is the node's (xtables.Context).
func (w *walker) Local(a netip.Addr) bool {
	if loopback.Contains(a) {
		return true
	}
	for _, ip := range w.rs.LocalIPs {
		if ip == a {
			return true
		}
	}
	return false
}

// stage runs a built-in chain for each way the packet goes: the ways it
// passes on are returned; DROPs and REJECTs are added to final.
func (w *walker) stage(table Table, hook string, in []state, final *[]end) []state {
	var out []state
	for _, s := range in {
		c := w.rs.Chain(table, hook)
		w.emit(step{kind: stepStage, table: table, hook: hook, chain: c, s: s, shared: len(in) > 1 || s.prob < 1})
		if c == nil {
			out = append(out, s)
			continue
		}
		for _, e := range w.walk(c, 0, s, 0) {
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

// IPSet: the iptables mode has none (xtables.Context).
func (w *walker) IPSet(string) (string, []kernel.IPSetEntry, bool) { return "", nil, false }

const maxDepth = 32

// walk runs chain c from rule i.
func (w *walker) walk(c *Chain, i int, s state, depth int) []end {
	if depth > maxDepth {
		w.emit(step{kind: stepTooDeep, depth: depth, table: c.Table, chain: c, s: s})
		return []end{{s, flowDrop}} // a loop: the kernel refuses those
	}
	for ; i < len(c.Rules); i++ {
		r := &c.Rules[i]
		m := r.Match(&s.Packet, w)
		if m == xtables.NoMatch {
			continue
		}
		at := step{depth: depth, table: c.Table, chain: c, rule: i, s: s}
		if m == xtables.Matches {
			at.kind = stepRule
			w.emit(at)
			return w.take(c, i, s, depth)
		}
		taken := s
		if r.Recent != nil && !r.Recent.Set {
			at.kind = stepAffinity
			w.emit(at)
			if !w.followAffinity {
				continue
			}
		} else {
			taken.prob = s.prob * r.Probability
			s.prob -= taken.prob
			at.kind, at.s = stepChance, taken
			w.emit(at)
		}
		ends := w.take(c, i, taken, depth)
		return append(ends, w.walk(c, i+1, s, depth)...)
	}
	return []end{{s, flowReturn}}
}

// take applies rule i's target to s.
func (w *walker) take(c *Chain, i int, s state, depth int) []end {
	r := &c.Rules[i]
	switch r.Jump {
	case "":
		return w.walk(c, i+1, s, depth)
	case targetMark:
		s.Mark = r.NewMark(s.Mark)
		return w.walk(c, i+1, s, depth)
	case targetReturn:
		return []end{{s, flowReturn}}
	case targetAccept:
		return []end{{s, flowAccept}}
	case targetDrop:
		return []end{{s, flowDrop}}
	case targetReject:
		return []end{{s, flowReject}}
	case targetDNAT:
		s.Dst, s.DPort, s.DNAT = r.ToDestination.Addr(), r.ToDestination.Port(), true
		w.emit(step{kind: stepDNAT, depth: depth, table: c.Table, chain: c, rule: i, s: s})
		return []end{{s, flowNAT}}
	case targetMasquerade:
		s.masq = true
		w.emit(step{kind: stepMasq, depth: depth, table: c.Table, chain: c, rule: i, s: s})
		return []end{{s, flowNAT}}
	}
	sub := w.rs.Chain(c.Table, r.Jump)
	if sub == nil {
		w.emit(step{kind: stepNoChain, depth: depth, table: c.Table, chain: c, rule: i, s: s})
		return []end{{s, flowDrop}} // restore would refuse it
	}
	w.emit(step{kind: stepEnter, depth: depth + 1, table: sub.Table, chain: sub, s: s})
	n := w.steps
	subEnds := w.walk(sub, 0, s, depth+1)
	if w.steps == n {
		w.emit(step{kind: stepNoMatch, depth: depth + 1, table: sub.Table, chain: sub, s: s})
	}
	var ends []end
	for _, e := range subEnds {
		if e.flow == flowReturn {
			ends = append(ends, w.walk(c, i+1, e.state, depth)...)
		} else {
			ends = append(ends, e)
		}
	}
	return ends
}
