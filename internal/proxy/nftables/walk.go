package nftables

import (
	"net/netip"
	"slices"
	"sort"

	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy"
)

// walker interprets the ruleset the way the kernel would for the first
// packet of a connection (no conntrack entry yet, session-affinity sets
// empty): the hook's base chains in priority order, each rule that
// matches, every bucket a DNAT map can pick and every chain numgen can
// go to, each a branch; then nat-postrouting for each DNATed branch.
//
// It is the one walk of the ruleset: Trace folds its branches into a
// verdict, Explain narrates its steps (see step) in the first hook as
// they are taken, so the two cannot disagree about where a packet goes.
type walker struct {
	rs *Ruleset
	// see, when set, is told each step as it is taken.
	see func(step)
	// quiet > 0: the walk follows another way through rules already
	// told (a second branch that continues after the same rule), and
	// tells nothing.
	quiet int
	// level is how many numgen vmaps the walk is inside.
	level int
}

// stepKind says what a step is.
type stepKind int

const (
	stepHook      stepKind = iota // a base chain of the hook is entered
	stepNoHook                    // the hook has no chain of kdive's table
	stepBaseEnd                   // the packet fell off a base chain: policy accept
	stepRule                      // a rule matched (its statement says what it does)
	stepElement                   // a vmap lookup found elem
	stepNoElement                 // a vmap lookup found no element for key
	stepBucket                    // a DNAT map's bucket: elem, or found false and key
	stepNumgen                    // numgen's pick n goes to chain name
	stepChainEnd                  // the chain ended without a verdict
	stepNoChain                   // a jump or goto to a chain that does not exist
	stepTooDeep                   // chains nest too deep: a loop
)

// step is one thing the packet meets.
type step struct {
	kind  stepKind
	level int // numgen nesting
	hook  string
	chain *Chain
	name  string // stepNoChain, stepTooDeep, stepNumgen: the chain's name
	rule  Rule
	elem  Element
	key   ElemKey
	found bool // stepBucket
	n, of int  // stepBucket, stepNumgen: the pick and how many
	// matched (stepChainEnd): a rule of the chain matched before it ended.
	matched bool
}

func (w *walker) emit(st step) {
	if w.see != nil && w.quiet == 0 {
		st.level = w.level
		w.see(st)
	}
}

// branches walks p through its first hook and, for each DNATed branch,
// nat-postrouting (which is not told: Explain sums it up per endpoint).
func (w *walker) branches(p proxy.Packet) []Branch {
	hook := "prerouting"
	if p.FromNode {
		hook = "output"
	}
	start := pktState{src: p.Src, dst: p.Dst, proto: p.Proto, dport: uint16(p.Port), fromNode: p.FromNode}
	outs := w.hook(hook, start)
	w.see = nil
	var out []Branch
	for _, o := range outs {
		b := Branch{Service: o.st.service, Path: o.st.path}
		switch o.kind {
		case outDrop:
			b.Verdict = proxy.DROP
		case outReject:
			b.Verdict = proxy.REJECT
		case outDNAT:
			b.Verdict, b.Endpoint = proxy.DNAT, o.to
			post := o.st
			post.dst, post.dport, post.dnat = o.to.Addr(), o.to.Port(), true
			for _, po := range w.hook("postrouting", post) {
				b.Masquerade = b.Masquerade || po.kind == outMasq
				b.Path = po.st.path
			}
		default:
			b.Verdict = proxy.ACCEPT
		}
		out = append(out, b)
	}
	return out
}

type pktState struct {
	src, dst netip.Addr
	proto    model.Protocol
	dport    uint16
	fromNode bool
	mark     uint32
	dnat     bool
	service  model.ServicePortName
	path     []string
}

type outKind int

const (
	outContinue outKind = iota // fell off the end or returned
	outAccept
	outDrop
	outReject
	outDNAT
	outMasq
)

type outcome struct {
	kind outKind
	to   netip.AddrPort
	st   pktState
}

// maxDepth bounds jumps (the kernel allows 16 levels; loops are refused).
const maxDepth = 32

func (w *walker) hook(hook string, st pktState) []outcome {
	var bases []*Chain
	for _, c := range w.rs.Chains {
		if c.Hook != nil && c.Hook.Hook == hook {
			bases = append(bases, c)
		}
	}
	sort.Slice(bases, func(i, j int) bool { return bases[i].Hook.Priority < bases[j].Hook.Priority })
	if len(bases) == 0 {
		w.emit(step{kind: stepNoHook, hook: hook})
	}
	outs := []outcome{{kind: outContinue, st: st}}
	for _, c := range bases {
		var next []outcome
		told := false
		for _, o := range outs {
			if o.kind != outContinue && o.kind != outAccept {
				next = append(next, o)
				continue
			}
			// A base chain's end (or accept) passes the packet on to the
			// next base chain of the hook. The first way through is told.
			if told {
				w.quiet++
			}
			w.emit(step{kind: stepHook, hook: hook, chain: c})
			st := o.st
			st.path = append(slices.Clip(st.path), c.Name)
			got := w.rules(c, 0, st, 0, false)
			if slices.ContainsFunc(got, func(o outcome) bool { return o.kind == outContinue }) {
				w.emit(step{kind: stepBaseEnd, chain: c})
			}
			if told {
				w.quiet--
			}
			told = true
			next = append(next, got...)
		}
		outs = next
	}
	return outs
}

func (w *walker) chain(name string, st pktState, depth int) []outcome {
	c := w.rs.Chains[name]
	switch {
	case c == nil:
		w.emit(step{kind: stepNoChain, name: name})
		return []outcome{{kind: outDrop, st: st}} // the kernel refuses such a ruleset
	case depth > maxDepth:
		w.emit(step{kind: stepTooDeep, name: name})
		return []outcome{{kind: outDrop, st: st}}
	}
	st.path = append(slices.Clip(st.path), name)
	return w.rules(c, 0, st, depth, false)
}

// rules walks c from rule i; matched says a rule before i matched.
func (w *walker) rules(c *Chain, i int, st pktState, depth int, matched bool) []outcome {
	for ; i < len(c.Rules); i++ {
		r := c.Rules[i]
		if !w.matches(r.Match, st) {
			continue
		}
		matched = true
		switch s := r.Stmt.(type) {
		case Verdict:
			w.emit(step{kind: stepRule, chain: c, rule: r})
			return w.verdict(c, i, s, st, depth)
		case ServiceVMap:
			k := ElemKey{Addr: st.dst, Proto: st.proto, Port: st.dport}
			e, ok := w.lookup(s.Map, k)
			if !ok {
				w.emit(step{kind: stepNoElement, chain: c, rule: r, key: k})
				continue
			}
			w.emit(step{kind: stepElement, chain: c, rule: r, elem: e})
			st.service = e.Service
			return w.verdict(c, i, e.Verdict, st, depth)
		case DNATMap:
			w.emit(step{kind: stepRule, chain: c, rule: r})
			var outs []outcome
			missing := 0
			for b := 0; b < s.N; b++ {
				k := ElemKey{Addr: st.dst, Proto: st.proto, Port: st.dport, Bucket: uint16(b)}
				e, ok := w.lookup(s.Map, k)
				w.emit(step{kind: stepBucket, chain: c, rule: r, elem: e, key: k, found: ok, n: b, of: s.N})
				if !ok { // a missing bucket: the rule does not match for this pick
					missing++
					continue
				}
				outs = append(outs, outcome{kind: outDNAT, to: e.Endpoint, st: st})
			}
			if missing > 0 {
				// Every missing bucket's pick goes on to the next rule alike.
				rest := w.rules(c, i+1, st, depth, true)
				for range missing {
					outs = append(outs, rest...)
				}
			}
			return outs
		case DNAT:
			w.emit(step{kind: stepRule, chain: c, rule: r})
			return []outcome{{kind: outDNAT, to: s.To, st: st}}
		case NumgenVMap:
			w.emit(step{kind: stepRule, chain: c, rule: r})
			var outs []outcome
			for n, ch := range s.Chains {
				w.emit(step{kind: stepNumgen, name: ch, n: n, of: len(s.Chains)})
				w.level++
				outs = append(outs, w.chain(ch, st, depth+1)...)
				w.level--
			}
			return outs
		case SetMark:
			w.emit(step{kind: stepRule, chain: c, rule: r})
			if s.Xor {
				st.mark ^= s.Mark
			} else {
				st.mark |= s.Mark
			}
		case Masquerade:
			w.emit(step{kind: stepRule, chain: c, rule: r})
			return []outcome{{kind: outMasq, st: st}}
		case Reject:
			w.emit(step{kind: stepRule, chain: c, rule: r})
			return []outcome{{kind: outReject, st: st}}
		case UpdateSaddr:
			// affinity sets are empty for a first packet; adding to them
			// changes nothing for it
			w.emit(step{kind: stepRule, chain: c, rule: r})
		}
	}
	w.emit(step{kind: stepChainEnd, chain: c, matched: matched})
	return []outcome{{kind: outContinue, st: st}}
}

func (w *walker) verdict(c *Chain, i int, v Verdict, st pktState, depth int) []outcome {
	switch v.Kind {
	case Accept:
		return []outcome{{kind: outAccept, st: st}}
	case Drop:
		return []outcome{{kind: outDrop, st: st}}
	case Return:
		return []outcome{{kind: outContinue, st: st}}
	case Goto:
		return w.chain(v.Chain, st, depth+1)
	case Jump:
		var outs []outcome
		told := false
		for _, o := range w.chain(v.Chain, st, depth+1) {
			if o.kind != outContinue {
				outs = append(outs, o)
				continue
			}
			// The first way back is told; the others go the same way on.
			if told {
				w.quiet++
			}
			outs = append(outs, w.rules(c, i+1, o.st, depth, true)...)
			if told {
				w.quiet--
			}
			told = true
		}
		return outs
	}
	return []outcome{{kind: outDrop, st: st}}
}

func (w *walker) lookup(set string, k ElemKey) (Element, bool) {
	s := w.rs.Sets[set]
	if s == nil {
		return Element{}, false
	}
	return s.Lookup(k)
}

func (w *walker) matches(ms []Match, st pktState) bool {
	for _, m := range ms {
		if !w.match(m, st) {
			return false
		}
	}
	return true
}

func (w *walker) match(m Match, st pktState) bool {
	switch m := m.(type) {
	case SaddrInSet:
		return w.saddrIn(m.Set, st.src) != m.Not
	case SaddrInPrefixes:
		in := slices.ContainsFunc(m.Prefixes, func(p netip.Prefix) bool { return p.Contains(st.src) })
		return in != m.Not
	case FibSaddrLocal:
		return st.fromNode || st.src.IsLoopback() || slices.Contains(w.rs.LocalIPs, st.src)
	case CtDNAT:
		return st.dnat
	case AddrPairInSet:
		_, ok := w.lookup(m.Set, ElemKey{Addr: st.src, Addr2: st.dst})
		return ok
	case MarkUnset:
		return st.mark&m.Mark == 0
	case L4Proto:
		return st.proto == m.Proto
	}
	return false
}

func (w *walker) saddrIn(set string, src netip.Addr) bool {
	s := w.rs.Sets[set]
	if s == nil {
		return false
	}
	switch s.Kind {
	case Prefixes:
		for _, e := range s.Elements() {
			if netip.PrefixFrom(e.Key.Addr, int(e.Key.Bits)).Contains(src) {
				return true
			}
		}
		return false
	case Clients:
		return false // filled at run time; empty for a first packet
	}
	_, ok := s.Lookup(ElemKey{Addr: src})
	return ok
}
