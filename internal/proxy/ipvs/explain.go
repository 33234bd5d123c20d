package ipvs

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy"
)

// Explain follows the packet as Trace does and says what it meets: the
// iptables rules that match (with the ipset entries they matched), the
// virtual server, its real servers with their weights and whether the
// packet is masqueraded to each, then the verdict.
func (in *inspection) Explain(p proxy.Packet) []string {
	var lines []string
	for _, n := range in.notes {
		lines = append(lines, "note: "+n)
	}
	if in.flavour != "" {
		lines = append(lines, "iptables rules from iptables-"+in.flavour)
	}
	e := newExplainer(in.r, p)
	e.lines = append(lines, "packet "+p.String())
	res := e.trace()
	return append(e.lines, "verdict: "+res.String())
}

// explainer mirrors Trace, noting what it meets. (The case table checks
// that the two agree: TestExplainAgreesWithTrace.)
type explainer struct {
	tracer
	lines []string
}

func newExplainer(r *Ruleset, p proxy.Packet) *explainer {
	e := &explainer{tracer: tracer{r: r, p: p, proto: strings.ToLower(string(p.Proto))}}
	if p.Proto == "" {
		e.proto = "tcp"
	}
	return e
}

func (e *explainer) logf(depth int, format string, args ...any) {
	e.lines = append(e.lines, strings.Repeat("  ", depth)+fmt.Sprintf(format, args...))
}

func (e *explainer) trace() proxy.Result {
	p := e.p
	hook := "PREROUTING"
	if p.FromNode {
		hook = "OUTPUT"
	}
	for _, table := range []string{tableMangle, tableNat} {
		if v := e.builtin(table, hook, p.Dst, p.Port); v == "DROP" || v == "REJECT" {
			return proxy.Result{Verdict: proxy.Verdict(v)}
		}
	}
	switch {
	case slices.Contains(e.r.Addresses, p.Dst):
		e.logf(0, "route: %s is local (on %s)", p.Dst, dummyDevice)
	case slices.Contains(e.r.NodeIPs, p.Dst):
		e.logf(0, "route: %s is local (a node address)", p.Dst)
	case p.Dst.IsLoopback():
		e.logf(0, "route: %s is local (loopback)", p.Dst)
	default:
		e.logf(0, "route: %s is not local: not service traffic", p.Dst)
		return proxy.Result{Verdict: proxy.ACCEPT}
	}
	if !p.FromNode {
		if v := e.builtin(tableFilter, "INPUT", p.Dst, p.Port); v == "DROP" || v == "REJECT" {
			return proxy.Result{Verdict: proxy.Verdict(v)}
		}
	}
	vs := e.lookup()
	if vs == nil {
		e.logf(0, "ipvs: no virtual server for %s %s (mark %#x): the node's own sockets get it",
			strings.ToUpper(e.proto), netip.AddrPortFrom(p.Dst, uint16(p.Port)), e.mark)
		return proxy.Result{Verdict: proxy.ACCEPT}
	}
	of := "not named by " + setNames
	if vs.Service != (model.ServicePortName{}) {
		of = fmt.Sprintf("%s of %s", vs.Kind, vs.Service)
	}
	e.logf(0, "ipvs: %s %s%s (%s)", vs.Key(), vs.Scheduler, flagsText(vs.VirtualServer), of)
	return e.realServers(vs)
}

// realServers notes each real server with its weight and masquerading;
// the POSTROUTING rules met are shown for the first one and then only
// where they change.
func (e *explainer) realServers(vs *VirtualServer) proxy.Result {
	res := proxy.Result{Verdict: proxy.DNAT, Endpoints: map[string]bool{}}
	mark := e.mark
	var shown []string // the POSTROUTING lines last shown
	anyShown := false
	for _, rs := range vs.RealServers {
		if rs.Weight <= 0 {
			e.logf(1, "-> %s weight %d: draining, no new connections", rs.Address, rs.Weight)
			continue
		}
		outer := e.lines
		e.lines = nil
		e.masq, e.mark = false, mark
		e.builtin(tableNat, "POSTROUTING", rs.Address.Addr(), int(rs.Address.Port()))
		met := e.lines
		e.lines = outer
		masq := "not masqueraded"
		if e.masq {
			masq = "masqueraded"
		}
		e.logf(1, "-> %s weight %d, %s", rs.Address, rs.Weight, masq)
		if !anyShown || !slices.Equal(met, shown) {
			for _, l := range met {
				e.logf(2, "%s", l)
			}
			shown, anyShown = met, true
		}
		res.Endpoints[rs.Address.String()] = e.masq
	}
	if len(res.Endpoints) == 0 {
		e.logf(1, "no real server of weight above 0: IPVS answers ICMP port unreachable")
		return proxy.Result{Verdict: proxy.REJECT}
	}
	return res
}

// builtin, like tracer.builtin, runs the jumps from a built-in chain.
func (e *explainer) builtin(table, chain string, dst netip.Addr, dport int) string {
	e.dst, e.dport = dst, dport
	v := e.run(table, chain, e.r.jumpsFrom(table, chain), 0)
	if v == "RETURN" || v == "ACCEPT" {
		return ""
	}
	return v
}

// run is tracer.run, noting every rule that matches and the set entries
// it matched.
func (e *explainer) run(table, chain string, rules []string, depth int) string {
	for _, line := range rules {
		r := parseRule(line)
		if !e.matches(r) {
			continue
		}
		e.logf(depth, "%s %s: %s", table, chain, line)
		for _, m := range r.matches {
			if len(m) >= 5 && m[0] == "-m" && m[1] == "set" && m[2] == "--match-set" {
				if entry, ok := e.setEntry(m[3], m[4]); ok {
					e.logf(depth+1, "ipset %s holds %s", m[3], entry)
				}
			}
		}
		switch r.target {
		case "ACCEPT", "DROP", "REJECT", "RETURN":
			return r.target
		case "MASQUERADE":
			e.masq = true
			return "ACCEPT"
		case "MARK":
			e.setMark(r.targetArgs)
			e.logf(depth+1, "mark now %#x", e.mark)
		case "SET":
			e.mapMark(r.targetArgs)
			e.logf(depth+1, "mark now %#x", e.mark)
		default:
			c := e.r.Chain(table, r.target)
			if c == nil || depth+1 > 8 {
				continue
			}
			if v := e.run(table, r.target, c.Rules, depth+1); v != "" && v != "RETURN" {
				return v
			}
		}
	}
	return ""
}
