package ipvs

import (
	"net/netip"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/xtables"
)

// The ipsets, as kube-proxy's IPVS mode names them, plus two of kdive's
// own: KUBE-SHORT-CIRCUIT and KUBE-NO-LOCAL-ENDPOINTS. Every service lives
// in set entries, so the iptables rules below never change with services.
const (
	setLoopBack          = "KUBE-LOOP-BACK"
	setClusterIP         = "KUBE-CLUSTER-IP"
	setExternalIP        = "KUBE-EXTERNAL-IP"
	setExternalIPLocal   = "KUBE-EXTERNAL-IP-LOCAL"
	setLoadBalancer      = "KUBE-LOAD-BALANCER"
	setLoadBalancerLocal = "KUBE-LOAD-BALANCER-LOCAL"
	setLoadBalancerFW    = "KUBE-LOAD-BALANCER-FW"
	setLBSourceIP        = "KUBE-LOAD-BALANCER-SOURCE-IP"
	setLBSourceCIDR      = "KUBE-LOAD-BALANCER-SOURCE-CIDR"
	setNodePortTCP       = "KUBE-NODE-PORT-TCP"
	setNodePortLocalTCP  = "KUBE-NODE-PORT-LOCAL-TCP"
	setNodePortUDP       = "KUBE-NODE-PORT-UDP"
	setNodePortLocalUDP  = "KUBE-NODE-PORT-LOCAL-UDP"
	setNodePortSCTP      = "KUBE-NODE-PORT-SCTP-HASH"
	setNodePortLocalSCTP = "KUBE-NODE-PORT-LOCAL-SCTP-HASH"
	setHealthCheck       = "KUBE-HEALTH-CHECK-NODE-PORT"
	setIPVSIPs           = "KUBE-IPVS-IPS"
	setShortCircuit      = "KUBE-SHORT-CIRCUIT"
	setNoLocalEndpoints  = "KUBE-NO-LOCAL-ENDPOINTS"
)

func hashSet(name, typ, match, comment string) Set {
	return Set{IPSetSpec: kernel.IPSetSpec{Name: name, Type: typ}, Match: match, Comment: comment}
}

func portSet(name, comment string) Set {
	return Set{IPSetSpec: kernel.IPSetSpec{Name: name, Type: "bitmap:port", PortFrom: 0, PortTo: 65535}, Match: "dst", Comment: comment}
}

// newSets are the mode's sets, empty, in the order they are created.
func newSets() []Set {
	sc := hashSet(setShortCircuit, "hash:ip,port", "dst,dst",
		"eTP Local external address:port -> fwmark of its short-circuit virtual server")
	sc.SkbInfo = true
	return []Set{
		hashSet(setLoopBack, "hash:ip,port,ip", "dst,dst,src", "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose"),
		hashSet(setClusterIP, "hash:ip,port", "dst,dst", "Kubernetes service cluster ip + port for masquerade purpose"),
		hashSet(setExternalIP, "hash:ip,port", "dst,dst", "Kubernetes service external ip + port for masquerade and filter purpose"),
		hashSet(setExternalIPLocal, "hash:ip,port", "dst,dst", "Kubernetes service external ip + port with externalTrafficPolicy=local"),
		hashSet(setLoadBalancer, "hash:ip,port", "dst,dst", "Kubernetes service lb portal"),
		hashSet(setLoadBalancerLocal, "hash:ip,port", "dst,dst", "Kubernetes service load balancer ip + port with externalTrafficPolicy=local"),
		hashSet(setLoadBalancerFW, "hash:ip,port", "dst,dst", "Kubernetes service load balancer ip + port for load balancer with sourceRange"),
		hashSet(setLBSourceIP, "hash:ip,port,ip", "dst,dst,src", "Kubernetes service load balancer ip + port + source IP for packet filter purpose"),
		hashSet(setLBSourceCIDR, "hash:ip,port,net", "dst,dst,src", "Kubernetes service load balancer ip + port + source cidr for packet filter purpose"),
		portSet(setNodePortTCP, "Kubernetes nodeport TCP port for masquerade purpose"),
		portSet(setNodePortLocalTCP, "Kubernetes nodeport TCP port with externalTrafficPolicy=local"),
		portSet(setNodePortUDP, "Kubernetes nodeport UDP port for masquerade purpose"),
		portSet(setNodePortLocalUDP, "Kubernetes nodeport UDP port with externalTrafficPolicy=local"),
		hashSet(setNodePortSCTP, "hash:ip,port", "dst,dst", "Kubernetes nodeport SCTP port for masquerade purpose"),
		hashSet(setNodePortLocalSCTP, "hash:ip,port", "dst,dst", "Kubernetes nodeport SCTP port with externalTrafficPolicy=local"),
		portSet(setHealthCheck, "Kubernetes health check node port"),
		hashSet(setIPVSIPs, "hash:ip", "dst", "Kubernetes service addresses on kube-ipvs0"),
		sc,
		hashSet(setNoLocalEndpoints, "hash:ip,port", "dst,dst",
			"Kubernetes service address:port whose Local traffic policy finds no local endpoint"),
	}
}

// Marks. masqMark is kube-proxy's (masqueradeBit 14). Short-circuit
// virtual servers use firewall marks shortCircuitBit | slot<<16 with a
// 12-bit slot, clear of the low 16 bits other software (kube-proxy's
// 0x4000 and 0x8000 among them) uses. IPVS matches a mark exactly, so a
// short-circuited packet never carries masqMark too: its masquerade, when
// it comes from the node, is decided in POSTROUTING from shortCircuitBit
// and the source address.
const (
	masqMark        uint32 = 0x4000
	shortCircuitBit uint32 = 0x10000000
	// shortCircuitMask selects the bits of kdive's marks.
	shortCircuitMask uint32 = 0x1fff0000
	maxSlot                 = 0xfff
)

// ourMark says a firewall mark is one of the short-circuit marks.
func ourMark(m uint32) bool { return m&shortCircuitBit != 0 && m&^shortCircuitMask == 0 }

const (
	tableNat    = "nat"
	tableMangle = "mangle"
	tableFilter = "filter"
)

// tables in the order the restore input and the text show them.
var tables = []string{tableMangle, tableNat, tableFilter}

// Chains. The nat and filter ones are kube-proxy's IPVS-mode chains; the
// mangle ones are kdive's: filtering (LoadBalancer source ranges, DROP
// without local endpoints) and short-circuit marks must happen before IPVS
// sees the packet, which for the node's own traffic is in OUTPUT right
// after nat (IPVS hooks LOCAL_OUT at NF_IP_PRI_NAT_DST+1) — only mangle
// comes before it on both paths.
const (
	chainServices      = "KUBE-SERVICES"
	chainPostrouting   = "KUBE-POSTROUTING"
	chainMarkMasq      = "KUBE-MARK-MASQ"
	chainNodePort      = "KUBE-NODE-PORT"
	chainLoadBalancer  = "KUBE-LOAD-BALANCER"
	chainForward       = "KUBE-FORWARD"
	chainIPVSFilter    = "KUBE-IPVS-FILTER"
	chainFirewall      = "KUBE-IPVS-FIREWALL"
	chainSourceRanges  = "KUBE-SOURCE-RANGES-FIREWALL"
	commentPortals     = "kubernetes service portals"
	commentPostrouting = "kubernetes postrouting rules"
	commentFirewall    = "kubernetes ipvs firewall and short circuit"
)

// ipvsOnlyChains are chains only the IPVS mode creates (per table); the
// others share their names with the iptables mode's.
var ipvsOnlyChains = map[string][]string{
	tableNat:    {chainNodePort, chainLoadBalancer},
	tableMangle: {chainFirewall, chainSourceRanges},
	tableFilter: {chainNodePort, chainIPVSFilter},
}

var sharedChains = map[string][]string{
	tableNat:    {chainServices, chainPostrouting, chainMarkMasq},
	tableFilter: {chainForward},
}

// The rules are written in iptables-save's own form (xtables.Rule's
// String), so that a sync compares them with what iptables-save prints.

func jumps(rejectUnknownPorts bool) []Jump {
	jump := func(table, builtin, comment, chain string) Jump {
		return Jump{Table: table, Chain: builtin, Rule: xtables.Rule{Comment: comment, Jump: chain}}
	}
	js := []Jump{
		jump(tableMangle, "PREROUTING", commentFirewall, chainFirewall),
		jump(tableMangle, "OUTPUT", commentFirewall, chainFirewall),
		jump(tableNat, "PREROUTING", commentPortals, chainServices),
		jump(tableNat, "OUTPUT", commentPortals, chainServices),
		jump(tableNat, "POSTROUTING", commentPostrouting, chainPostrouting),
		jump(tableFilter, "INPUT", "kubernetes health check rules", chainNodePort),
		jump(tableFilter, "FORWARD", "kubernetes forwarding rules", chainForward),
	}
	if rejectUnknownPorts {
		js = append(js, jump(tableFilter, "INPUT", "kubernetes ipvs access filter", chainIPVSFilter))
	}
	return js
}

// matchSet is `-m set --match-set NAME <the set's flags>`.
func matchSet(r *Ruleset, name string) *xtables.SetMatch {
	s := r.Set(name)
	return &xtables.SetMatch{Name: s.Name, Flags: s.Match}
}

// inSet is a rule matching set name, with the set's comment.
func inSet(r *Ruleset, name string, target string) xtables.Rule {
	return xtables.Rule{Comment: r.Set(name).Comment, Set: matchSet(r, name), Jump: target}
}

// renderChains writes the constant rules: they depend on the
// configuration (pod CIDRs, masquerade-all, the unknown-port filter) but
// never on services.
func renderChains(r *Ruleset, clusterCIDRs []netip.Prefix, masqueradeAll, rejectUnknownPorts bool) {
	r.Chains = append(mangleChains(r, clusterCIDRs), natChains(r, clusterCIDRs, masqueradeAll)...)
	r.Chains = append(r.Chains, filterChains(r, rejectUnknownPorts)...)
	r.Jumps = jumps(rejectUnknownPorts)
}

// mangleChains filter before IPVS: LoadBalancer source ranges, the
// short-circuit marks, DROP for Local policies without local endpoints.
func mangleChains(r *Ruleset, clusterCIDRs []netip.Prefix) []Chain {
	shortCircuit := func(rule xtables.Rule) xtables.Rule {
		rule.Comment, rule.Set = r.Set(setShortCircuit).Comment, matchSet(r, setShortCircuit)
		rule.Jump, rule.MapSet = xtables.SetTarget, &xtables.SetMatch{Name: setShortCircuit, Flags: "dst,dst"}
		return rule
	}
	fw := []xtables.Rule{inSet(r, setLoadBalancerFW, chainSourceRanges)}
	for _, c := range clusterCIDRs {
		fw = append(fw, shortCircuit(xtables.Rule{Src: c}))
	}
	noLocal := inSet(r, setNoLocalEndpoints, xtables.Drop)
	noLocal.CtState = xtables.CtNew
	fw = append(fw,
		shortCircuit(xtables.Rule{SrcLocal: true, Order: xtables.Order{xtables.ModAddrType, xtables.ModComment, xtables.ModSet}}),
		xtables.Rule{Mark: shortCircuitBit, Jump: xtables.Return},
		noLocal)
	sr := []xtables.Rule{
		{Set: matchSet(r, setLBSourceCIDR), Jump: xtables.Return},
		{Set: matchSet(r, setLBSourceIP), Jump: xtables.Return},
		{Jump: xtables.Drop},
	}
	return []Chain{{tableMangle, chainFirewall, fw}, {tableMangle, chainSourceRanges, sr}}
}

// natChains mark what to masquerade (kube-proxy's IPVS-mode rules) and
// masquerade it, hairpin and short-circuited node traffic included.
func natChains(r *Ruleset, clusterCIDRs []netip.Prefix, masqueradeAll bool) []Chain {
	svc := []xtables.Rule{{Src: netip.MustParsePrefix("127.0.0.0/8"), Jump: xtables.Return}, inSet(r, setLoadBalancer, chainLoadBalancer)}
	svc = append(svc, clusterIPMasq(r, clusterCIDRs, masqueradeAll)...)
	svc = append(svc,
		inSet(r, setExternalIP, chainMarkMasq),
		xtables.Rule{DstLocal: true, Jump: chainNodePort},
		xtables.Rule{Set: matchSet(r, setClusterIP), Jump: xtables.Accept},
		xtables.Rule{Set: matchSet(r, setLoadBalancer), Jump: xtables.Accept})
	lb := []xtables.Rule{inSet(r, setLoadBalancerLocal, xtables.Return), {Jump: chainMarkMasq}}
	var np []xtables.Rule
	for _, p := range []struct{ proto, local, all string }{
		{"tcp", setNodePortLocalTCP, setNodePortTCP}, {"udp", setNodePortLocalUDP, setNodePortUDP},
		{"sctp", setNodePortLocalSCTP, setNodePortSCTP},
	} {
		local, all := inSet(r, p.local, xtables.Return), inSet(r, p.all, chainMarkMasq)
		local.Proto, local.BareProto, all.Proto, all.BareProto = p.proto, true, p.proto, true
		np = append(np, local, all)
	}
	post := []xtables.Rule{
		inSet(r, setLoopBack, xtables.Masquerade),
		{Comment: "short-circuited node traffic to eTP Local services", Mark: shortCircuitBit, SrcLocal: true,
			Order: xtables.Order{xtables.ModComment, xtables.ModMark, xtables.ModAddrType}, Jump: xtables.Masquerade},
		{Mark: masqMark, NotMark: true, Jump: xtables.Return},
		{Jump: xtables.Mark, MarkXor: masqMark},
		{Comment: "kubernetes service traffic requiring SNAT", Jump: xtables.Masquerade, RandomFully: true},
	}
	masq := []xtables.Rule{{Jump: xtables.Mark, MarkOr: masqMark}}
	return []Chain{
		{tableNat, chainServices, svc}, {tableNat, chainPostrouting, post}, {tableNat, chainMarkMasq, masq},
		{tableNat, chainNodePort, np}, {tableNat, chainLoadBalancer, lb},
	}
}

// clusterIPMasq marks traffic to cluster IPs from outside the pod network
// (or all of it with masquerade-all).
func clusterIPMasq(r *Ruleset, clusterCIDRs []netip.Prefix, masqueradeAll bool) []xtables.Rule {
	switch {
	case masqueradeAll:
		return []xtables.Rule{inSet(r, setClusterIP, chainMarkMasq)}
	case len(clusterCIDRs) == 1:
		rule := inSet(r, setClusterIP, chainMarkMasq)
		rule.Src, rule.NotSrc = clusterCIDRs[0], true
		return []xtables.Rule{rule}
	case len(clusterCIDRs) > 1:
		// Pods' traffic to cluster IPs is done in nat; the rest is masqueraded.
		var out []xtables.Rule
		for _, c := range clusterCIDRs {
			out = append(out, xtables.Rule{Src: c, Set: matchSet(r, setClusterIP), Jump: xtables.Accept})
		}
		return append(out, inSet(r, setClusterIP, chainMarkMasq))
	}
	// No pod CIDR known: masquerade the node's own traffic, whose source
	// is the service address itself (kube-proxy does the same).
	rule := inSet(r, setClusterIP, chainMarkMasq)
	rule.Set.Flags = "src,dst"
	return []xtables.Rule{rule}
}

// filterChains accept forwarded service traffic and health check ports
// under a default-drop policy and, optionally, refuse a service address's
// other ports (kube-proxy's KUBE-IPVS-FILTER).
func filterChains(r *Ruleset, rejectUnknownPorts bool) []Chain {
	fwd := []xtables.Rule{
		{Comment: "kubernetes forwarding rules", Mark: masqMark, Jump: xtables.Accept},
		{Comment: "kubernetes forwarding conntrack rule", CtState: xtables.CtRelated | xtables.CtEstablished, Jump: xtables.Accept},
	}
	hc := []xtables.Rule{inSet(r, setHealthCheck, xtables.Accept)}
	var filter []xtables.Rule
	if rejectUnknownPorts {
		for _, s := range []string{setLoadBalancer, setClusterIP, setExternalIP, setExternalIPLocal, setHealthCheck} {
			filter = append(filter, xtables.Rule{Set: matchSet(r, s), Jump: xtables.Return})
		}
		filter = append(filter, xtables.Rule{CtState: xtables.CtNew, Set: matchSet(r, setIPVSIPs), Jump: xtables.Reject})
	}
	return []Chain{{tableFilter, chainForward, fwd}, {tableFilter, chainNodePort, hc}, {tableFilter, chainIPVSFilter, filter}}
}
