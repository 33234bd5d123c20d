package ipvs

import (
	"fmt"
	"github.com/kdive/kdive/internal/proxy"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/kdive/kdive/internal/kernel"
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
	line  string // stepRule: the rule as iptables-save prints it
	set   string // stepSetEntry
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

func (w *walker) local(a netip.Addr) bool { return w.localWhy(a) != "" }

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
func (r *Ruleset) jumpsFrom(table, chain string) []string {
	var rules []string
	for _, j := range r.Jumps {
		if j.Table == table && strings.HasPrefix(j.Rule, "-A "+chain+" ") {
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

// run evaluates chain's rules in order; a verdict ends the chain. A jump
// to a chain that returns (or falls off its end) continues with the next
// rule.
func (w *walker) run(table, chain string, rules []string, depth int) string {
	for _, line := range rules {
		r := parseRule(line)
		if !w.matches(r) {
			continue
		}
		w.emit(step{kind: stepRule, depth: depth, table: table, chain: chain, line: line})
		if w.see != nil {
			for _, m := range r.matches {
				if len(m) >= 5 && m[0] == "-m" && m[1] == "set" && m[2] == "--match-set" {
					if entry, ok := w.setEntry(m[3], m[4]); ok {
						w.emit(step{kind: stepSetEntry, depth: depth + 1, set: m[3], entry: entry})
					}
				}
			}
		}
		switch r.target {
		case "ACCEPT", "DROP", "REJECT", "RETURN":
			return r.target
		case "MASQUERADE":
			w.masq = true
			return "ACCEPT"
		case "MARK":
			w.setMark(r.targetArgs)
			w.emit(step{kind: stepMark, depth: depth + 1})
		case "SET":
			w.mapMark(r.targetArgs)
			w.emit(step{kind: stepMark, depth: depth + 1})
		default:
			c := w.r.Chain(table, r.target)
			if c == nil || depth+1 > 8 {
				continue
			}
			if v := w.run(table, r.target, c.Rules, depth+1); v != "" && v != "RETURN" {
				return v
			}
		}
	}
	return ""
}

// rule is one parsed iptables-save line.
type rule struct {
	matches    [][]string // each: optional "!", option, values ("-s", "10.0.0.0/16"), ("-m", "set", ...) grouped per module
	target     string
	targetArgs []string
}

func parseRule(line string) rule {
	words := splitWords(line)
	var r rule
	var cur []string
	flush := func() {
		if len(cur) > 0 {
			r.matches = append(r.matches, cur)
			cur = nil
		}
	}
	for i := 2; i < len(words); i++ { // skip "-A CHAIN"
		w := words[i]
		switch {
		case w == "-j":
			flush()
			r.target, r.targetArgs = words[i+1], words[i+2:]
			return r
		case w == "!" && i+1 < len(words) && slices.Contains([]string{"-s", "-d", "-p"}, words[i+1]):
			flush()
			cur = []string{w, words[i+1]}
			i++
		case w == "-m" || w == "-s" || w == "-d" || w == "-p":
			flush()
			cur = []string{w}
		default:
			cur = append(cur, w)
		}
	}
	flush()
	return r
}

// splitWords splits a rule into words (xtables.SplitRule); an
// unterminated quote runs to the end.
func splitWords(s string) []string {
	w, _ := xtables.SplitRule(s)
	return w
}

func (w *walker) matches(r rule) bool {
	for _, m := range r.matches {
		if !w.match(m) {
			return false
		}
	}
	return true
}

// match evaluates one match group: ["!", "-s", cidr], ["-p", "tcp"],
// ["-m", "set", "--match-set", name, flags], ["-m", "mark", "!", "--mark", v/m], ...
func (w *walker) match(m []string) bool {
	neg := false
	if m[0] == "!" {
		neg, m = true, m[1:]
	}
	switch m[0] {
	case "-s":
		return neg != netip.MustParsePrefix(m[1]).Contains(w.p.Src)
	case "-d":
		return neg != netip.MustParsePrefix(m[1]).Contains(w.dst)
	case "-p":
		return neg != (m[1] == w.proto)
	case "-m":
		return w.module(m[1], m[2:])
	}
	panic(fmt.Sprintf("trace: unknown match %q", m))
}

func (w *walker) module(name string, args []string) bool {
	neg := false
	if len(args) > 0 && args[0] == "!" {
		neg, args = true, args[1:]
	}
	switch name {
	case "comment":
		return true
	case "conntrack": // --ctstate ...: the first packet of a connection is NEW
		return neg != slices.Contains(strings.Split(args[1], ","), "NEW")
	case "addrtype": // --src-type / --dst-type LOCAL
		a := w.p.Src
		if args[0] == "--dst-type" {
			a = w.dst
		}
		return neg != w.local(a)
	case "mark": // --mark value/mask
		v, m := parseMark(args[1])
		return neg != (w.mark&m == v)
	case "set": // --match-set NAME flags
		_, ok := w.setEntry(args[1], args[2])
		return neg != ok
	}
	panic(fmt.Sprintf("trace: unknown module %q", name))
}

// setEntry finds the set entry matching the packet's fields named by
// flags (dst,dst,src: destination address, destination port, source).
func (w *walker) setEntry(name, flags string) (kernel.IPSetEntry, bool) {
	s := w.r.Set(name)
	if s == nil {
		return kernel.IPSetEntry{}, false
	}
	f := strings.Split(flags, ",")
	for _, e := range s.Entries {
		if w.entryMatches(s.Type, e, f) {
			return e, true
		}
	}
	return kernel.IPSetEntry{}, false
}

func (w *walker) addr(flag string) netip.Addr {
	if flag == "src" {
		return w.p.Src
	}
	return w.dst
}

func (w *walker) entryMatches(typ string, e kernel.IPSetEntry, f []string) bool {
	portOK := func(flag string) bool {
		return flag == "dst" && e.Proto == w.proto && int(e.Port) == w.dport
	}
	switch typ {
	case "bitmap:port":
		return len(f) == 1 && f[0] == "dst" && int(e.Port) == w.dport
	case "hash:ip":
		return e.IP == w.addr(f[0])
	case "hash:ip,port":
		return len(f) == 2 && e.IP == w.addr(f[0]) && portOK(f[1])
	case "hash:ip,port,ip":
		return len(f) == 3 && e.IP == w.addr(f[0]) && portOK(f[1]) && e.IP2 == w.addr(f[2])
	case "hash:ip,port,net":
		return len(f) == 3 && e.IP == w.addr(f[0]) && portOK(f[1]) && e.Net2.Contains(w.addr(f[2]))
	}
	return false
}

// setMark applies MARK --set-xmark value/mask.
func (w *walker) setMark(args []string) {
	if len(args) == 2 && args[0] == "--set-xmark" {
		v, m := parseMark(args[1])
		w.mark = (w.mark &^ m) ^ v
	}
}

// mapMark applies SET --map-set NAME flags --map-mark: the entry's
// skbmark replaces the packet's mark (kdive's entries mask all bits).
func (w *walker) mapMark(args []string) {
	if len(args) >= 4 && args[0] == "--map-set" && args[3] == "--map-mark" {
		if e, ok := w.setEntry(args[1], args[2]); ok && e.SkbMark != 0 {
			w.mark = e.SkbMark
		}
	}
}

func parseMark(s string) (value, mask uint32) {
	v, m, ok := strings.Cut(s, "/")
	value = parseUint32(v)
	mask = 0xffffffff
	if ok {
		mask = parseUint32(m)
	}
	return value, mask
}

func parseUint32(s string) uint32 {
	n, err := strconv.ParseUint(s, 0, 32)
	if err != nil {
		panic(fmt.Sprintf("trace: bad number %q", s))
	}
	return uint32(n)
}
