package ipvs

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy"
)

// Explain walks the packet as Trace does (see walker) and says what it
// meets: the iptables rules that match (with the ipset entries they
// matched), the virtual server, its real servers with their weights and
// whether the packet is masqueraded to each, then the verdict.
func (in *inspection) Explain(p proxy.Packet) []string {
	x := &explainer{p: p}
	for _, n := range in.notes {
		x.lines = append(x.lines, "note: "+n)
	}
	if in.flavour != "" {
		x.lines = append(x.lines, "iptables rules from iptables-"+in.flavour)
	}
	x.lines = append(x.lines, "packet "+p.String())
	w := newWalker(in.r, p)
	w.see = func(st step) { x.say(w, st) }
	res := w.walk()
	return append(x.lines, "verdict: "+res.String())
}

// explainer narrates a walker's steps. The POSTROUTING rules met are
// shown for the first real server and then only where they change.
type explainer struct {
	p     proxy.Packet
	lines []string
	// post collects the POSTROUTING lines towards one real server;
	// shown are those last shown.
	post, shown []string
	inPost      bool
	anyShown    bool
}

func (x *explainer) logf(depth int, format string, args ...any) {
	line := strings.Repeat("  ", depth) + fmt.Sprintf(format, args...)
	if x.inPost {
		x.post = append(x.post, line)
		return
	}
	x.lines = append(x.lines, line)
}

func (x *explainer) say(w *walker, st step) {
	p := x.p
	switch st.kind {
	case stepRule:
		x.logf(st.depth, "%s %s: %s", st.table, st.chain, ruleLine(st.chain, st.rule))
	case stepSetEntry:
		x.logf(st.depth, "ipset %s holds %s", st.set, st.entry)
	case stepMark:
		x.logf(st.depth, "mark now %#x", w.mark)
	case stepRoute:
		if st.why == "" {
			x.logf(0, "route: %s is not local: not service traffic", p.Dst)
		} else {
			x.logf(0, "route: %s is local (%s)", p.Dst, st.why)
		}
	case stepNoVirtual:
		x.logf(0, "ipvs: no virtual server for %s %s (mark %#x): the node's own sockets get it",
			strings.ToUpper(w.proto), netip.AddrPortFrom(p.Dst, uint16(p.Port)), w.mark)
	case stepVirtual:
		vs := st.vs
		of := "not named by " + setNames
		if vs.Service != (model.ServicePortName{}) {
			of = fmt.Sprintf("%s of %s", vs.Kind, vs.Service)
		}
		x.logf(0, "ipvs: %s %s%s (%s)", vs.Key(), vs.Scheduler, flagsText(vs.VirtualServer), of)
	case stepDraining:
		x.logf(1, "-> %s weight %d: draining, no new connections", st.rs.Address, st.rs.Weight)
	case stepPostrouting:
		x.inPost, x.post = true, nil
	case stepRealServer:
		x.inPost = false
		masq := "not masqueraded"
		if st.masq {
			masq = "masqueraded"
		}
		x.logf(1, "-> %s weight %d, %s", st.rs.Address, st.rs.Weight, masq)
		if !x.anyShown || !slices.Equal(x.post, x.shown) {
			for _, l := range x.post {
				x.logf(2, "%s", l)
			}
			x.shown, x.anyShown = x.post, true
		}
	case stepNoRealServer:
		x.logf(1, "no real server of weight above 0: IPVS answers ICMP port unreachable")
	}
}
