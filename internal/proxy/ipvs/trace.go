package ipvs

import (
	"net/netip"
	"slices"
	"strings"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/proxy"
	"github.com/kdive/kdive/internal/xtables"
)

// Trace follows the first packet of a connection through a plan the way
// the kernel would, interpreting the plan's own iptables rules and ipsets:
//
//   - mangle, then nat PREROUTING (arriving) or OUTPUT (from the node):
//     the firewall (source ranges, DROP without local endpoints), the
//     short-circuit marks, the masquerade mark;
//   - routing: a destination that is no local address (kube-ipvs0's, the
//     node's, loopback) is not service traffic: ACCEPT;
//   - filter INPUT, for arriving packets (IPVS hooks LOCAL_IN after it;
//     for the node's own packets IPVS comes first, in LOCAL_OUT);
//   - IPVS: the firewall-mark virtual server when the packet carries its
//     mark, else the one of its address, protocol and port; none: the
//     node's own stack gets it (ACCEPT); no real server of weight > 0:
//     IPVS answers ICMP port unreachable (REJECT);
//   - nat POSTROUTING towards each real server: masquerade or not.
func Trace(r *Ruleset, p proxy.Packet) proxy.Result {
	return newWalker(r, p).walk()
}

// walker is the one walk of a plan: Trace takes its result, Explain
// narrates its steps (see step) as they are taken, so the two cannot
// disagree about where a packet goes.
type walker struct {
	r     *Ruleset
	p     proxy.Packet
	proto string
	mark  uint32
	masq  bool
	// dst and dport are the packet's current destination (the real
	// server's after IPVS).
	dst   netip.Addr
	dport int
	// see, when set, is told each step as it is taken.
	see func(step)
}

// stepKind says what a step is.
type stepKind int

const (
	stepRule         stepKind = iota // an iptables rule matched
	stepSetEntry                     // the ipset entry a rule's match-set matched
	stepMark                         // the packet's mark changed
	stepRoute                        // the routing decision: why says why dst is local, or "" when it is not
	stepNoVirtual                    // no virtual server takes the packet
	stepVirtual                      // the virtual server that takes it
	stepDraining                     // a real server of weight 0
	stepPostrouting                  // nat POSTROUTING towards a real server begins
	stepRealServer                   // a real server the packet can go to, masq says how
	stepNoRealServer                 // no real server of weight above 0
)

// step is one thing the packet meets.
type step struct {
	kind  stepKind
	depth int
	table string
	chain string
	rule  *xtables.Rule // stepRule
	set   string        // stepSetEntry
	entry kernel.IPSetEntry
	why   string // stepRoute
	vs    *VirtualServer
	rs    kernel.RealServer
	masq  bool
}

func newWalker(r *Ruleset, p proxy.Packet) *walker {
	w := &walker{r: r, p: p, proto: strings.ToLower(string(p.Proto))}
	if p.Proto == "" {
		w.proto = "tcp"
	}
	return w
}

func (w *walker) emit(st step) {
	if w.see != nil {
		w.see(st)
	}
}

// walk takes the packet through the hooks (see Trace).
func (w *walker) walk() proxy.Result {
	p := w.p
	hook := "PREROUTING"
	if p.FromNode {
		hook = "OUTPUT"
	}
	for _, table := range []string{tableMangle, tableNat} {
		if v := w.builtin(table, hook, p.Dst, p.Port); v == "DROP" || v == "REJECT" {
			return proxy.Result{Verdict: proxy.Verdict(v)}
		}
	}
	why := w.localWhy(p.Dst)
	w.emit(step{kind: stepRoute, why: why})
	if why == "" {
		return proxy.Result{Verdict: proxy.ACCEPT}
	}
	if !p.FromNode {
		if v := w.builtin(tableFilter, "INPUT", p.Dst, p.Port); v == "DROP" || v == "REJECT" {
			return proxy.Result{Verdict: proxy.Verdict(v)}
		}
	}
	vs := w.lookup()
	if vs == nil {
		w.emit(step{kind: stepNoVirtual})
		return proxy.Result{Verdict: proxy.ACCEPT}
	}
	w.emit(step{kind: stepVirtual, vs: vs})
	res := proxy.Result{Verdict: proxy.DNAT, Endpoints: map[string]bool{}}
	mark := w.mark
	for _, rs := range vs.RealServers {
		if rs.Weight <= 0 {
			w.emit(step{kind: stepDraining, rs: rs})
			continue
		}
		w.masq, w.mark = false, mark
		w.emit(step{kind: stepPostrouting, rs: rs})
		w.builtin(tableNat, "POSTROUTING", rs.Address.Addr(), int(rs.Address.Port()))
		w.emit(step{kind: stepRealServer, rs: rs, masq: w.masq})
		res.Endpoints[rs.Address.String()] = w.masq
	}
	if len(res.Endpoints) == 0 {
		w.emit(step{kind: stepNoRealServer})
		return proxy.Result{Verdict: proxy.REJECT}
	}
	return res
}

// localWhy says why a is one of the node's addresses: on the dummy
// device, a node address, loopback; "" when it is none.
func (w *walker) localWhy(a netip.Addr) string {
	switch {
	case slices.Contains(w.r.Addresses, a):
		return "on " + Device
	case slices.Contains(w.r.NodeIPs, a):
		return "a node address"
	case a.IsLoopback():
		return "loopback"
	}
	return ""
}

// Local says a is one of the node's addresses (xtables.Context).
func (w *walker) Local(a netip.Addr) bool { return w.localWhy(a) != "" }

func (w *walker) lookup() *VirtualServer {
	if w.mark != 0 {
		for i, vs := range w.r.VirtualServers {
			if vs.FWMark == w.mark {
				return &w.r.VirtualServers[i]
			}
		}
	}
	for i, vs := range w.r.VirtualServers {
		if vs.FWMark == 0 && vs.Address == w.p.Dst && int(vs.Port) == w.p.Port && strings.EqualFold(vs.Protocol, string(w.p.Proto)) {
			return &w.r.VirtualServers[i]
		}
	}
	return nil
}

// jumpsFrom are r's jump rules in a built-in chain of table, in order.
func (r *Ruleset) jumpsFrom(table, chain string) []xtables.Rule {
	var rules []xtables.Rule
	for _, j := range r.Jumps {
		if j.Table == table && j.Chain == chain {
			rules = append(rules, j.Rule)
		}
	}
	return rules
}

// builtin runs the plan's jumps from a built-in chain (its only rules, as
// far as kdive knows) and returns the verdict, "" to continue.
func (w *walker) builtin(table, chain string, dst netip.Addr, dport int) string {
	w.dst, w.dport = dst, dport
	v := w.run(table, chain, w.r.jumpsFrom(table, chain), 0)
	if v == "RETURN" || v == "ACCEPT" {
		return ""
	}
	return v
}

// packet is the packet as the rules see it now.
func (w *walker) packet() xtables.Packet {
	return xtables.Packet{Src: w.p.Src, Dst: w.dst, Proto: w.proto, DPort: uint16(w.dport), Mark: w.mark}
}

// IPSet is the plan's set (xtables.Context).
func (w *walker) IPSet(name string) (string, []kernel.IPSetEntry, bool) {
	s := w.r.Set(name)
	if s == nil {
		return "", nil, false
	}
	return s.Type, s.Entries, true
}

// run evaluates chain's rules in order (the matching is xtables.Rule's);
// a verdict ends the chain. A jump to a chain that returns (or falls off
// its end) continues with the next rule.
func (w *walker) run(table, chain string, rules []xtables.Rule, depth int) string {
	for i := range rules {
		r := &rules[i]
		pk := w.packet()
		if r.Match(&pk, w) == xtables.NoMatch {
			continue
		}
		w.emit(step{kind: stepRule, depth: depth, table: table, chain: chain, rule: r})
		if w.see != nil && r.Set != nil {
			if entry, ok := r.Set.Entry(&pk, w); ok {
				w.emit(step{kind: stepSetEntry, depth: depth + 1, set: r.Set.Name, entry: entry})
			}
		}
		switch r.Jump {
		case xtables.Accept, xtables.Drop, xtables.Reject, xtables.Return:
			return r.Jump
		case xtables.Masquerade:
			w.masq = true
			return xtables.Accept
		case xtables.Mark:
			w.mark = r.NewMark(w.mark)
			w.emit(step{kind: stepMark, depth: depth + 1})
		case xtables.SetTarget:
			// The entry's skbmark replaces the packet's mark (kdive's
			// entries mask all bits).
			if e, ok := r.MapSet.Entry(&pk, w); ok && e.SkbMark != 0 {
				w.mark = e.SkbMark
			}
			w.emit(step{kind: stepMark, depth: depth + 1})
		default:
			c := w.r.Chain(table, r.Jump)
			if c == nil || depth+1 > 8 {
				continue
			}
			if v := w.run(table, r.Jump, c.Rules, depth+1); v != "" && v != "RETURN" {
				return v
			}
		}
	}
	return ""
}
