package ipvs

import (
	"fmt"
	"net/netip"

	"github.com/kdive/kdive/internal/kernel"
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
	commentPortals     = `"kubernetes service portals"`
	commentPostrouting = `"kubernetes postrouting rules"`
	commentFirewall    = `"kubernetes ipvs firewall and short circuit"`
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

func jumps(rejectUnknownPorts bool) []Jump {
	js := []Jump{
		{tableMangle, "-A PREROUTING -m comment --comment " + commentFirewall + " -j " + chainFirewall},
		{tableMangle, "-A OUTPUT -m comment --comment " + commentFirewall + " -j " + chainFirewall},
		{tableNat, "-A PREROUTING -m comment --comment " + commentPortals + " -j " + chainServices},
		{tableNat, "-A OUTPUT -m comment --comment " + commentPortals + " -j " + chainServices},
		{tableNat, "-A POSTROUTING -m comment --comment " + commentPostrouting + " -j " + chainPostrouting},
		{tableFilter, `-A INPUT -m comment --comment "kubernetes health check rules" -j ` + chainNodePort},
		{tableFilter, `-A FORWARD -m comment --comment "kubernetes forwarding rules" -j ` + chainForward},
	}
	if rejectUnknownPorts {
		js = append(js, Jump{tableFilter, `-A INPUT -m comment --comment "kubernetes ipvs access filter" -j ` + chainIPVSFilter})
	}
	return js
}

func matchSet(r *Ruleset, name string) string {
	s := r.Set(name)
	return fmt.Sprintf("-m set --match-set %s %s", s.Name, s.Match)
}

func comment(r *Ruleset, name string) string {
	return fmt.Sprintf("-m comment --comment %q", r.Set(name).Comment)
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
	mark := fmt.Sprintf("%#x/%#x", shortCircuitBit, shortCircuitBit)
	var fw []string
	fw = append(fw, fmt.Sprintf("-A %s %s %s -j %s", chainFirewall, comment(r, setLoadBalancerFW), matchSet(r, setLoadBalancerFW), chainSourceRanges))
	scTarget := fmt.Sprintf("-j SET --map-set %s dst,dst --map-mark", setShortCircuit)
	for _, c := range clusterCIDRs {
		fw = append(fw, fmt.Sprintf("-A %s -s %s %s %s %s", chainFirewall, c, comment(r, setShortCircuit), matchSet(r, setShortCircuit), scTarget))
	}
	fw = append(fw,
		fmt.Sprintf("-A %s -m addrtype --src-type LOCAL %s %s %s", chainFirewall, comment(r, setShortCircuit), matchSet(r, setShortCircuit), scTarget),
		fmt.Sprintf("-A %s -m mark --mark %s -j RETURN", chainFirewall, mark),
		fmt.Sprintf("-A %s %s -m conntrack --ctstate NEW %s -j DROP", chainFirewall, comment(r, setNoLocalEndpoints), matchSet(r, setNoLocalEndpoints)))
	sr := []string{
		fmt.Sprintf("-A %s %s -j RETURN", chainSourceRanges, matchSet(r, setLBSourceCIDR)),
		fmt.Sprintf("-A %s %s -j RETURN", chainSourceRanges, matchSet(r, setLBSourceIP)),
		fmt.Sprintf("-A %s -j DROP", chainSourceRanges),
	}
	return []Chain{{tableMangle, chainFirewall, fw}, {tableMangle, chainSourceRanges, sr}}
}

// natChains mark what to masquerade (kube-proxy's IPVS-mode rules) and
// masquerade it, hairpin and short-circuited node traffic included.
func natChains(r *Ruleset, clusterCIDRs []netip.Prefix, masqueradeAll bool) []Chain {
	svc := []string{fmt.Sprintf("-A %s -s 127.0.0.0/8 -j RETURN", chainServices),
		fmt.Sprintf("-A %s %s %s -j %s", chainServices, comment(r, setLoadBalancer), matchSet(r, setLoadBalancer), chainLoadBalancer)}
	svc = append(svc, clusterIPMasq(r, clusterCIDRs, masqueradeAll)...)
	svc = append(svc,
		fmt.Sprintf("-A %s %s %s -j %s", chainServices, comment(r, setExternalIP), matchSet(r, setExternalIP), chainMarkMasq),
		fmt.Sprintf("-A %s -m addrtype --dst-type LOCAL -j %s", chainServices, chainNodePort),
		fmt.Sprintf("-A %s %s -j ACCEPT", chainServices, matchSet(r, setClusterIP)),
		fmt.Sprintf("-A %s %s -j ACCEPT", chainServices, matchSet(r, setLoadBalancer)))
	lb := []string{
		fmt.Sprintf("-A %s %s %s -j RETURN", chainLoadBalancer, comment(r, setLoadBalancerLocal), matchSet(r, setLoadBalancerLocal)),
		fmt.Sprintf("-A %s -j %s", chainLoadBalancer, chainMarkMasq),
	}
	var np []string
	for _, p := range []struct{ proto, local, all string }{
		{"tcp", setNodePortLocalTCP, setNodePortTCP}, {"udp", setNodePortLocalUDP, setNodePortUDP},
		{"sctp", setNodePortLocalSCTP, setNodePortSCTP},
	} {
		np = append(np,
			fmt.Sprintf("-A %s -p %s %s %s -j RETURN", chainNodePort, p.proto, comment(r, p.local), matchSet(r, p.local)),
			fmt.Sprintf("-A %s -p %s %s %s -j %s", chainNodePort, p.proto, comment(r, p.all), matchSet(r, p.all), chainMarkMasq))
	}
	post := []string{
		fmt.Sprintf("-A %s %s %s -j MASQUERADE", chainPostrouting, comment(r, setLoopBack), matchSet(r, setLoopBack)),
		fmt.Sprintf(`-A %s -m comment --comment "short-circuited node traffic to eTP Local services" -m mark --mark %#x/%#x -m addrtype --src-type LOCAL -j MASQUERADE`,
			chainPostrouting, shortCircuitBit, shortCircuitBit),
		fmt.Sprintf("-A %s -m mark ! --mark %#x/%#x -j RETURN", chainPostrouting, masqMark, masqMark),
		fmt.Sprintf("-A %s -j MARK --set-xmark %#x/0x0", chainPostrouting, masqMark),
		fmt.Sprintf(`-A %s -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully`, chainPostrouting),
	}
	masq := []string{fmt.Sprintf("-A %s -j MARK --set-xmark %#x/%#x", chainMarkMasq, masqMark, masqMark)}
	return []Chain{
		{tableNat, chainServices, svc}, {tableNat, chainPostrouting, post}, {tableNat, chainMarkMasq, masq},
		{tableNat, chainNodePort, np}, {tableNat, chainLoadBalancer, lb},
	}
}

// clusterIPMasq marks traffic to cluster IPs from outside the pod network
// (or all of it with masquerade-all).
func clusterIPMasq(r *Ruleset, clusterCIDRs []netip.Prefix, masqueradeAll bool) []string {
	switch {
	case masqueradeAll:
		return []string{fmt.Sprintf("-A %s %s %s -j %s", chainServices, comment(r, setClusterIP), matchSet(r, setClusterIP), chainMarkMasq)}
	case len(clusterCIDRs) == 1:
		return []string{fmt.Sprintf("-A %s ! -s %s %s %s -j %s", chainServices, clusterCIDRs[0], comment(r, setClusterIP), matchSet(r, setClusterIP), chainMarkMasq)}
	case len(clusterCIDRs) > 1:
		// Pods' traffic to cluster IPs is done in nat; the rest is masqueraded.
		var out []string
		for _, c := range clusterCIDRs {
			out = append(out, fmt.Sprintf("-A %s -s %s %s -j ACCEPT", chainServices, c, matchSet(r, setClusterIP)))
		}
		return append(out, fmt.Sprintf("-A %s %s %s -j %s", chainServices, comment(r, setClusterIP), matchSet(r, setClusterIP), chainMarkMasq))
	}
	// No pod CIDR known: masquerade the node's own traffic, whose source
	// is the service address itself (kube-proxy does the same).
	return []string{fmt.Sprintf("-A %s %s -m set --match-set %s src,dst -j %s", chainServices, comment(r, setClusterIP), setClusterIP, chainMarkMasq)}
}

// filterChains accept forwarded service traffic and health check ports
// under a default-drop policy and, optionally, refuse a service address's
// other ports (kube-proxy's KUBE-IPVS-FILTER).
func filterChains(r *Ruleset, rejectUnknownPorts bool) []Chain {
	fwd := []string{
		fmt.Sprintf(`-A %s -m comment --comment "kubernetes forwarding rules" -m mark --mark %#x/%#x -j ACCEPT`, chainForward, masqMark, masqMark),
		fmt.Sprintf(`-A %s -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`, chainForward),
	}
	hc := []string{fmt.Sprintf("-A %s %s %s -j ACCEPT", chainNodePort, comment(r, setHealthCheck), matchSet(r, setHealthCheck))}
	var filter []string
	if rejectUnknownPorts {
		for _, s := range []string{setLoadBalancer, setClusterIP, setExternalIP, setExternalIPLocal, setHealthCheck} {
			filter = append(filter, fmt.Sprintf("-A %s %s -j RETURN", chainIPVSFilter, matchSet(r, s)))
		}
		filter = append(filter, fmt.Sprintf("-A %s -m conntrack --ctstate NEW %s -j REJECT --reject-with icmp-port-unreachable", chainIPVSFilter, matchSet(r, setIPVSIPs)))
	}
	return []Chain{{tableFilter, chainForward, fwd}, {tableFilter, chainNodePort, hc}, {tableFilter, chainIPVSFilter, filter}}
}
