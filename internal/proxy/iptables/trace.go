package iptables

import (
	"net/netip"

	"github.com/kdive/kdive/internal/proxy"
)

// Trace follows the first packet of a connection through the rules (see
// walker) and sums up where it can end. Where a rule matches only
// sometimes (`-m statistic`, `-m recent --rcheck`) it follows both ways,
// so the result names every endpoint the packet can reach, each with
// whether it is masqueraded.
func Trace(rs *Ruleset, p proxy.Packet) proxy.Result {
	w := &walker{rs: rs, followAffinity: true}
	return result(w.run(p))
}

// result sums up the ways a packet went: DNAT to the endpoints it can
// reach, else DROP, REJECT or ACCEPT.
func result(ends []end) proxy.Result {
	eps := map[string]bool{}
	var drop, reject bool
	for _, e := range ends {
		switch {
		case e.flow == flowDrop:
			drop = true
		case e.flow == flowReject:
			reject = true
		case e.DNAT:
			k := netip.AddrPortFrom(e.Dst, e.DPort).String()
			eps[k] = eps[k] || e.masq
		}
	}
	switch {
	case len(eps) > 0:
		return proxy.Result{Verdict: proxy.DNAT, Endpoints: eps}
	case drop:
		return proxy.Result{Verdict: proxy.DROP}
	case reject:
		return proxy.Result{Verdict: proxy.REJECT}
	}
	return proxy.Result{Verdict: proxy.ACCEPT}
}
