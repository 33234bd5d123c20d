package iptables

import (
	"fmt"
	"strings"

	"github.com/kdive/kdive/internal/proxy"
)

// Explain walks p's first packet through the rules (the walk Trace takes,
// see walker) and says, one line each and indented by depth: each chain
// entered, each rule that matched as iptables-save prints it, the chance
// of each random branch (-m statistic: the effective chance, not the
// rule's p), the DNAT, and what KUBE-POSTROUTING decides; then one result
// line per way the packet can go and the verdict. Affinity rules (-m
// recent --rcheck) are named but not followed: the lines are about a
// client the kernel has not seen yet.
func (in *Inspected) Explain(p proxy.Packet) []string {
	x := &explainer{in: in}
	x.add(0, "%s, iptables-%s", p, in.flavour)
	w := &walker{rs: in.rs, see: x.say}
	for _, e := range w.run(p) {
		x.add(0, "%s", e.String())
	}
	x.add(0, "verdict: %s", in.Trace(p))
	return x.lines
}

type explainer struct {
	in    *Inspected
	lines []string
}

func (x *explainer) add(indent int, format string, args ...any) {
	x.lines = append(x.lines, strings.Repeat("  ", indent)+fmt.Sprintf(format, args...))
}

// say narrates one step: a built-in chain's lines at the margin, a
// chain's rules two steps in from the line that entered it.
func (x *explainer) say(st step) {
	rules := 1 + 2*st.depth // the indent of a chain's rules at st.depth
	s := st.s
	switch st.kind {
	case stepStage:
		switch {
		case st.chain == nil:
			x.add(0, "%s %s: no kdive rules", st.table, st.hook)
		case st.shared:
			x.add(0, "%s %s, for %s -> %s:%d (chance %s):", st.table, st.hook, s.Src, s.Dst, s.DPort, percent(s.prob))
		default:
			x.add(0, "%s %s:", st.table, st.hook)
		}
	case stepRoute:
		if st.local {
			x.add(0, "routing: %s is this node's address", s.Dst)
		} else {
			x.add(0, "routing: %s is not this node's address", s.Dst)
		}
	case stepRule:
		x.add(rules, "%s", x.in.ruleText(st.chain, st.rule))
	case stepChance:
		x.add(rules, "%s  [chance %s]", x.in.ruleText(st.chain, st.rule), percent(s.prob))
	case stepAffinity:
		x.add(rules, "%s  [affinity: only a client seen in the last %ds; not followed]", x.in.ruleText(st.chain, st.rule), st.chain.Rules[st.rule].Recent.Seconds)
	case stepDNAT:
		x.add(rules+1, "DNAT to %s", st.chain.Rules[st.rule].ToDestination)
	case stepMasq:
		x.add(rules+1, "MASQUERADE: the source becomes the outgoing interface's address")
	case stepNoChain:
		x.add(rules+1, "%s %s: no such chain", st.table, st.chain.Rules[st.rule].Jump)
	case stepEnter:
		x.add(rules-1, "%s %s%s:", st.table, st.chain.Name, chainNote(st.chain))
	case stepNoMatch:
		x.add(rules, "no rule matches")
	case stepTooDeep:
		x.add(rules, "%s: too deep, a loop", st.chain.Name)
	}
}

func (e end) String() string {
	var what string
	switch {
	case e.flow == flowDrop:
		what = "DROP"
	case e.flow == flowReject:
		what = "REJECT"
	case e.DNAT && e.masq:
		what = fmt.Sprintf("DNAT to %s:%d, masqueraded (KUBE-MARK-MASQ set, KUBE-POSTROUTING MASQUERADE)", e.Dst, e.DPort)
	case e.DNAT:
		what = fmt.Sprintf("DNAT to %s:%d, not masqueraded (source %s kept)", e.Dst, e.DPort, e.Src)
	default:
		what = "ACCEPT, not translated"
	}
	return fmt.Sprintf("result (chance %s): %s", percent(e.prob), what)
}

func percent(p float64) string { return fmt.Sprintf("%.1f%%", 100*p) }

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
