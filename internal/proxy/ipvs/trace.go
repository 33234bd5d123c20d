package ipvs

import (
	"fmt"
	"github.com/kdive/kdive/internal/proxy"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/kdive/kdive/internal/kernel"
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
	t := tracer{r: r, p: p, proto: strings.ToLower(string(p.Proto))}
	if t.p.Proto == "" {
		t.proto = "tcp"
	}
	hook := "PREROUTING"
	if p.FromNode {
		hook = "OUTPUT"
	}
	for _, table := range []string{tableMangle, tableNat} {
		if v := t.builtin(table, hook, p.Dst, p.Port); v == "DROP" || v == "REJECT" {
			return proxy.Result{Verdict: proxy.Verdict(v)}
		}
	}
	if !t.local(p.Dst) {
		return proxy.Result{Verdict: proxy.ACCEPT}
	}
	if !p.FromNode {
		if v := t.builtin(tableFilter, "INPUT", p.Dst, p.Port); v == "DROP" || v == "REJECT" {
			return proxy.Result{Verdict: proxy.Verdict(v)}
		}
	}
	vs := t.lookup()
	if vs == nil {
		return proxy.Result{Verdict: proxy.ACCEPT}
	}
	res := proxy.Result{Verdict: proxy.DNAT, Endpoints: map[string]bool{}}
	mark := t.mark
	for _, rs := range vs.RealServers {
		if rs.Weight <= 0 {
			continue
		}
		t.masq, t.mark = false, mark
		t.builtin(tableNat, "POSTROUTING", rs.Address.Addr(), int(rs.Address.Port()))
		res.Endpoints[rs.Address.String()] = t.masq
	}
	if len(res.Endpoints) == 0 {
		return proxy.Result{Verdict: proxy.REJECT}
	}
	return res
}

type tracer struct {
	r     *Ruleset
	p     proxy.Packet
	proto string
	mark  uint32
	masq  bool
	// dst and dport are the packet's current destination (the real
	// server's after IPVS).
	dst   netip.Addr
	dport int
}

func (t *tracer) local(a netip.Addr) bool {
	return a.IsLoopback() || slices.Contains(t.r.NodeIPs, a) || slices.Contains(t.r.Addresses, a)
}

func (t *tracer) lookup() *VirtualServer {
	if t.mark != 0 {
		for i, vs := range t.r.VirtualServers {
			if vs.FWMark == t.mark {
				return &t.r.VirtualServers[i]
			}
		}
	}
	for i, vs := range t.r.VirtualServers {
		if vs.FWMark == 0 && vs.Address == t.p.Dst && int(vs.Port) == t.p.Port && strings.EqualFold(vs.Protocol, string(t.p.Proto)) {
			return &t.r.VirtualServers[i]
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
func (t *tracer) builtin(table, chain string, dst netip.Addr, dport int) string {
	t.dst, t.dport = dst, dport
	v := t.run(table, t.r.jumpsFrom(table, chain), 0)
	if v == "RETURN" || v == "ACCEPT" {
		return ""
	}
	return v
}

func (t *tracer) chain(table, name string, depth int) string {
	c := t.r.Chain(table, name)
	if c == nil || depth > 8 {
		return ""
	}
	return t.run(table, c.Rules, depth)
}

// run evaluates rules in order; a verdict ends the chain. A jump to a
// chain that returns (or falls off its end) continues with the next rule.
func (t *tracer) run(table string, rules []string, depth int) string {
	for _, line := range rules {
		r := parseRule(line)
		if !t.matches(r) {
			continue
		}
		switch r.target {
		case "ACCEPT", "DROP", "REJECT", "RETURN":
			return r.target
		case "MASQUERADE":
			t.masq = true
			return "ACCEPT"
		case "MARK":
			t.setMark(r.targetArgs)
		case "SET":
			t.mapMark(r.targetArgs)
		default:
			if v := t.chain(table, r.target, depth+1); v != "" && v != "RETURN" {
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

// splitWords splits on spaces, keeping "quoted strings" whole.
func splitWords(s string) []string {
	var out []string
	var b strings.Builder
	quoted := false
	for _, c := range s {
		switch {
		case c == '"':
			quoted = !quoted
		case c == ' ' && !quoted:
			if b.Len() > 0 {
				out = append(out, b.String())
				b.Reset()
			}
		default:
			b.WriteRune(c)
		}
	}
	if b.Len() > 0 {
		out = append(out, b.String())
	}
	return out
}

func (t *tracer) matches(r rule) bool {
	for _, m := range r.matches {
		if !t.match(m) {
			return false
		}
	}
	return true
}

// match evaluates one match group: ["!", "-s", cidr], ["-p", "tcp"],
// ["-m", "set", "--match-set", name, flags], ["-m", "mark", "!", "--mark", v/m], ...
func (t *tracer) match(m []string) bool {
	neg := false
	if m[0] == "!" {
		neg, m = true, m[1:]
	}
	switch m[0] {
	case "-s":
		return neg != netip.MustParsePrefix(m[1]).Contains(t.p.Src)
	case "-d":
		return neg != netip.MustParsePrefix(m[1]).Contains(t.dst)
	case "-p":
		return neg != (m[1] == t.proto)
	case "-m":
		return t.module(m[1], m[2:])
	}
	panic(fmt.Sprintf("trace: unknown match %q", m))
}

func (t *tracer) module(name string, args []string) bool {
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
		a := t.p.Src
		if args[0] == "--dst-type" {
			a = t.dst
		}
		return neg != t.local(a)
	case "mark": // --mark value/mask
		v, m := parseMark(args[1])
		return neg != (t.mark&m == v)
	case "set": // --match-set NAME flags
		_, ok := t.setEntry(args[1], args[2])
		return neg != ok
	}
	panic(fmt.Sprintf("trace: unknown module %q", name))
}

// setEntry finds the set entry matching the packet's fields named by
// flags (dst,dst,src: destination address, destination port, source).
func (t *tracer) setEntry(name, flags string) (kernel.IPSetEntry, bool) {
	s := t.r.Set(name)
	if s == nil {
		return kernel.IPSetEntry{}, false
	}
	f := strings.Split(flags, ",")
	for _, e := range s.Entries {
		if t.entryMatches(s.Type, e, f) {
			return e, true
		}
	}
	return kernel.IPSetEntry{}, false
}

func (t *tracer) addr(flag string) netip.Addr {
	if flag == "src" {
		return t.p.Src
	}
	return t.dst
}

func (t *tracer) entryMatches(typ string, e kernel.IPSetEntry, f []string) bool {
	portOK := func(flag string) bool {
		return flag == "dst" && e.Proto == t.proto && int(e.Port) == t.dport
	}
	switch typ {
	case "bitmap:port":
		return len(f) == 1 && f[0] == "dst" && int(e.Port) == t.dport
	case "hash:ip":
		return e.IP == t.addr(f[0])
	case "hash:ip,port":
		return len(f) == 2 && e.IP == t.addr(f[0]) && portOK(f[1])
	case "hash:ip,port,ip":
		return len(f) == 3 && e.IP == t.addr(f[0]) && portOK(f[1]) && e.IP2 == t.addr(f[2])
	case "hash:ip,port,net":
		return len(f) == 3 && e.IP == t.addr(f[0]) && portOK(f[1]) && e.Net2.Contains(t.addr(f[2]))
	}
	return false
}

// setMark applies MARK --set-xmark value/mask.
func (t *tracer) setMark(args []string) {
	if len(args) == 2 && args[0] == "--set-xmark" {
		v, m := parseMark(args[1])
		t.mark = (t.mark &^ m) ^ v
	}
}

// mapMark applies SET --map-set NAME flags --map-mark: the entry's
// skbmark replaces the packet's mark (kdive's entries mask all bits).
func (t *tracer) mapMark(args []string) {
	if len(args) >= 4 && args[0] == "--map-set" && args[3] == "--map-mark" {
		if e, ok := t.setEntry(args[1], args[2]); ok && e.SkbMark != 0 {
			t.mark = e.SkbMark
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
