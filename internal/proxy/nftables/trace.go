package nftables

import (
	"github.com/kdive/kdive/internal/proxy"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"strings"

	"github.com/kdive/kdive/internal/model"
)

// Branch is one way the first packet of a connection can go through the
// ruleset: where numgen picks among endpoints, each pick is a branch.
type Branch struct {
	Verdict proxy.Verdict
	// Endpoint and Masquerade: where a DNAT sends the packet, and whether
	// nat-postrouting masquerades it.
	Endpoint   netip.AddrPort
	Masquerade bool
	// Service is the service port whose element dispatched the packet.
	Service model.ServicePortName
	// Path are the chains the packet went through, in order.
	Path []string
}

// Trace interprets the ruleset the way the kernel would for the first
// packet of a connection (no conntrack entry yet, session-affinity sets
// empty), enumerating every endpoint numgen could pick.
func Trace(rs *Ruleset, p proxy.Packet) proxy.Result {
	return Summarize(TraceBranches(rs, p))
}

// Summarize folds branches into one result. Branches that disagree on
// the verdict give a verdict naming all of them ("MIXED ..."), which no
// correct ruleset produces.
func Summarize(branches []Branch) proxy.Result {
	verdicts := map[proxy.Verdict]bool{}
	for _, b := range branches {
		verdicts[b.Verdict] = true
	}
	if len(verdicts) != 1 {
		vs := slices.Sorted(maps.Keys(verdicts))
		parts := make([]string, len(vs))
		for i, v := range vs {
			parts[i] = string(v)
		}
		return proxy.Result{Verdict: proxy.Verdict("MIXED " + strings.Join(parts, "+"))}
	}
	r := proxy.Result{Verdict: branches[0].Verdict}
	if r.Verdict == proxy.DNAT {
		r.Endpoints = map[string]bool{}
		for _, b := range branches {
			r.Endpoints[b.Endpoint.String()] = r.Endpoints[b.Endpoint.String()] || b.Masquerade
		}
	}
	return r
}

// TraceBranches is Trace with every branch and the chains it took.
func TraceBranches(rs *Ruleset, p proxy.Packet) []Branch {
	hook := "prerouting"
	if p.FromNode {
		hook = "output"
	}
	t := &tracer{rs: rs}
	start := pktState{src: p.Src, dst: p.Dst, proto: p.Proto, dport: uint16(p.Port), fromNode: p.FromNode}
	var out []Branch
	for _, o := range t.hook(hook, start) {
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
			for _, po := range t.hook("postrouting", post) {
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

type tracer struct{ rs *Ruleset }

// maxDepth bounds jumps (the kernel allows 16 levels; loops are refused).
const maxDepth = 32

func (t *tracer) hook(hook string, st pktState) []outcome {
	var bases []*Chain
	for _, c := range t.rs.Chains {
		if c.Hook != nil && c.Hook.Hook == hook {
			bases = append(bases, c)
		}
	}
	sort.Slice(bases, func(i, j int) bool { return bases[i].Hook.Priority < bases[j].Hook.Priority })
	outs := []outcome{{kind: outContinue, st: st}}
	for _, c := range bases {
		var next []outcome
		for _, o := range outs {
			if o.kind != outContinue && o.kind != outAccept {
				next = append(next, o)
				continue
			}
			// A base chain's end (or accept) passes the packet on to the
			// next base chain of the hook.
			next = append(next, t.chain(c.Name, o.st, 0)...)
		}
		outs = next
	}
	return outs
}

func (t *tracer) chain(name string, st pktState, depth int) []outcome {
	c := t.rs.Chains[name]
	if c == nil || depth > maxDepth {
		return []outcome{{kind: outDrop, st: st}} // the kernel refuses such a ruleset
	}
	st.path = append(slices.Clip(st.path), name)
	return t.rules(c, 0, st, depth)
}

func (t *tracer) rules(c *Chain, i int, st pktState, depth int) []outcome {
	for ; i < len(c.Rules); i++ {
		r := c.Rules[i]
		if !t.matches(r.Match, st) {
			continue
		}
		switch s := r.Stmt.(type) {
		case Verdict:
			return t.verdict(c, i, s, st, depth)
		case ServiceVMap:
			e, ok := t.lookup(s.Map, ElemKey{Addr: st.dst, Proto: st.proto, Port: st.dport})
			if !ok {
				continue
			}
			st.service = e.Service
			return t.verdict(c, i, e.Verdict, st, depth)
		case DNATMap:
			var outs []outcome
			for b := 0; b < s.N; b++ {
				e, ok := t.lookup(s.Map, ElemKey{Addr: st.dst, Proto: st.proto, Port: st.dport, Bucket: uint16(b)})
				if !ok { // a missing bucket: the rule does not match for this pick
					outs = append(outs, t.rules(c, i+1, st, depth)...)
					continue
				}
				outs = append(outs, outcome{kind: outDNAT, to: e.Endpoint, st: st})
			}
			return outs
		case DNAT:
			return []outcome{{kind: outDNAT, to: s.To, st: st}}
		case NumgenVMap:
			var outs []outcome
			for _, ch := range s.Chains {
				outs = append(outs, t.chain(ch, st, depth+1)...)
			}
			return outs
		case SetMark:
			if s.Xor {
				st.mark ^= s.Mark
			} else {
				st.mark |= s.Mark
			}
		case Masquerade:
			return []outcome{{kind: outMasq, st: st}}
		case Reject:
			return []outcome{{kind: outReject, st: st}}
		case UpdateSaddr:
			// affinity sets are empty for a first packet; adding to them
			// changes nothing for it
		}
	}
	return []outcome{{kind: outContinue, st: st}}
}

func (t *tracer) verdict(c *Chain, i int, v Verdict, st pktState, depth int) []outcome {
	switch v.Kind {
	case Accept:
		return []outcome{{kind: outAccept, st: st}}
	case Drop:
		return []outcome{{kind: outDrop, st: st}}
	case Return:
		return []outcome{{kind: outContinue, st: st}}
	case Goto:
		return t.chain(v.Chain, st, depth+1)
	case Jump:
		var outs []outcome
		for _, o := range t.chain(v.Chain, st, depth+1) {
			if o.kind == outContinue {
				outs = append(outs, t.rules(c, i+1, o.st, depth)...)
			} else {
				outs = append(outs, o)
			}
		}
		return outs
	}
	return []outcome{{kind: outDrop, st: st}}
}

func (t *tracer) lookup(set string, k ElemKey) (Element, bool) {
	s := t.rs.Sets[set]
	if s == nil {
		return Element{}, false
	}
	return s.Lookup(k)
}

func (t *tracer) matches(ms []Match, st pktState) bool {
	for _, m := range ms {
		if !t.match(m, st) {
			return false
		}
	}
	return true
}

func (t *tracer) match(m Match, st pktState) bool {
	switch m := m.(type) {
	case SaddrInSet:
		return t.saddrIn(m.Set, st.src) != m.Not
	case SaddrInPrefixes:
		in := slices.ContainsFunc(m.Prefixes, func(p netip.Prefix) bool { return p.Contains(st.src) })
		return in != m.Not
	case FibSaddrLocal:
		return st.fromNode || st.src.IsLoopback() || slices.Contains(t.rs.LocalIPs, st.src)
	case CtDNAT:
		return st.dnat
	case AddrPairInSet:
		_, ok := t.lookup(m.Set, ElemKey{Addr: st.src, Addr2: st.dst})
		return ok
	case MarkUnset:
		return st.mark&m.Mark == 0
	case L4Proto:
		return st.proto == m.Proto
	}
	return false
}

func (t *tracer) saddrIn(set string, src netip.Addr) bool {
	s := t.rs.Sets[set]
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
