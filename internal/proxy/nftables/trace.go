package nftables

import (
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy"
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
	return (&walker{rs: rs}).branches(p)
}
