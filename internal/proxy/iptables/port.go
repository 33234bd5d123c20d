package iptables

import (
	"net/netip"

	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy"
	"github.com/kdive/kdive/internal/xtables"
)

// portRender is the state of rendering one service port, decided as
// upstream kube-proxy's syncProxyRules decides it, from the endpoints the
// proxy core chose (proxy.Port).
type portRender struct {
	p     *proxy.Port
	pn    *portNames
	g     globals
	name  *model.ServicePortName
	proto string
	sc    *ServiceChains

	hasInternal, hasExternal bool
	internalChain            string // KUBE-SVC or KUBE-SVL: where cluster IP traffic goes
	externalChain            string // KUBE-SVC or KUBE-SVL: where EXT sends outside traffic
	lbChain                  string // KUBE-EXT, or KUBE-FW with source ranges
	usesExt, usesFW          bool
}

// port renders one service port: its own chains and its rules in the
// shared chains.
func (r *renderer) port(p *proxy.Port, g globals) *ServiceChains {
	pn := r.names.port(p.Name)
	pr := &portRender{p: p, pn: pn, g: g, name: &pn.name, proto: pn.proto, sc: &ServiceChains{Name: p.Name}}
	pr.hasInternal = len(p.InternalEndpoints()) > 0
	pr.hasExternal = len(p.ExternalEndpoints()) > 0
	pr.internalChain, pr.externalChain = pn.svc, pn.svc
	if p.InternalPolicyLocal {
		pr.internalChain = pn.svl
	}
	if p.ExternalPolicyLocal {
		pr.externalChain = pn.svl
	}
	pr.usesExt = p.HasEndpoints && p.ExternallyAccessible()
	pr.usesFW = p.HasEndpoints && len(p.LoadBalancerIPs) > 0 && len(p.LoadBalancerSourceRanges) > 0
	pr.lbChain = pn.ext
	if pr.usesFW {
		pr.lbChain = pn.fw
	}
	pr.natEntry()
	pr.filter()
	pr.chains()
	if len(pn.seps) > 2*len(p.Endpoints)+16 {
		pn.seps = map[netip.AddrPort]*endpointNames{} // endpoints churned: start over
	}
	return pr.sc
}

func (pr *portRender) add(c topChain, r Rule) {
	r.Service = pr.name
	pr.sc.top[c] = append(pr.sc.top[c], r)
}

// natEntry captures the port's addresses in nat KUBE-SERVICES and
// KUBE-NODEPORTS.
func (pr *portRender) natEntry() {
	p, pn, cm := pr.p, pr.pn, &pr.pn.comment
	port := uint16(p.Port)
	if pr.hasInternal {
		for _, ip := range p.ClusterIPs {
			pr.add(topNATServices, Rule{Rule: xtables.Rule{Comment: cm.clusterIP, Proto: pr.proto, Dst: hostPrefix(ip), DPort: port, Jump: pr.internalChain}})
		}
	}
	if !p.HasEndpoints {
		return
	}
	for _, ip := range p.ExternalIPs {
		pr.add(topNATServices, Rule{Rule: xtables.Rule{Comment: cm.externalIP, Proto: pr.proto, Dst: hostPrefix(ip), DPort: port, Jump: pn.ext}})
	}
	for _, ip := range p.LoadBalancerIPs {
		pr.add(topNATServices, Rule{Rule: xtables.Rule{Comment: cm.lbIP, Proto: pr.proto, Dst: hostPrefix(ip), DPort: port, Jump: pr.lbChain}})
	}
	if p.NodePort != 0 {
		// NodePorts are not subject to loadBalancerSourceRanges (upstream
		// cannot change that, and neither do we).
		pr.add(topNATNodePorts, Rule{Rule: xtables.Rule{Comment: pn.str, Proto: pr.proto, DPort: uint16(p.NodePort), Jump: pn.ext}})
	}
}

// filter writes the REJECT (no endpoints at all) and DROP (endpoints, but
// none for this traffic; LoadBalancer clients outside the source ranges)
// rules, and accepts the health check port.
func (pr *portRender) filter() {
	p, cm := pr.p, &pr.pn.comment
	port := uint16(p.Port)
	target, comment := targetReject, cm.noEndpoints
	if p.HasEndpoints {
		target, comment = targetDrop, cm.noLocal
	}
	if !pr.hasInternal {
		for _, ip := range p.ClusterIPs {
			pr.add(topFilterServices, Rule{Rule: xtables.Rule{Comment: comment, Proto: pr.proto, Dst: hostPrefix(ip), DPort: port, Jump: target}})
		}
	}
	if !pr.hasExternal {
		for _, ip := range p.ExternalIPs {
			pr.add(topFilterExternal, Rule{Rule: xtables.Rule{Comment: comment, Proto: pr.proto, Dst: hostPrefix(ip), DPort: port, Jump: target}})
		}
	}
	for _, ip := range p.LoadBalancerIPs {
		if pr.usesFW {
			pr.add(topFilterFirewall, Rule{Rule: xtables.Rule{Comment: cm.firewall, Proto: pr.proto, Dst: hostPrefix(ip), DPort: port, Jump: targetDrop}})
		}
	}
	if !pr.hasExternal {
		for _, ip := range p.LoadBalancerIPs {
			pr.add(topFilterExternal, Rule{Rule: xtables.Rule{Comment: comment, Proto: pr.proto, Dst: hostPrefix(ip), DPort: port, Jump: target}})
		}
		if p.NodePort != 0 {
			pr.add(topFilterExternal, Rule{Rule: xtables.Rule{Comment: comment, DstLocal: true, Proto: pr.proto, DPort: uint16(p.NodePort), Jump: target}})
		}
	}
	if p.HealthCheckNodePort != 0 {
		pr.add(topFilterNodePorts, Rule{Rule: xtables.Rule{Comment: cm.healthCheck, Proto: "tcp", DPort: uint16(p.HealthCheckNodePort), Jump: targetAccept}})
	}
}

func (pr *portRender) chain(name string, rules []Rule) {
	for i := range rules {
		rules[i].Service = pr.name
	}
	pr.sc.Chains = append(pr.sc.Chains, &Chain{Table: TableNAT, Name: name, Rules: rules, Service: pr.name})
}

// chains writes the port's own nat chains: KUBE-SVC (cluster endpoints),
// KUBE-SVL (local endpoints), KUBE-EXT (external destinations), KUBE-FW
// (source ranges) and a KUBE-SEP per endpoint.
func (pr *portRender) chains() {
	p, pn := pr.p, pr.pn
	if len(p.Cluster) > 0 {
		pr.chain(pn.svc, pr.balance(pn.svc, p.Cluster))
	}
	if len(p.Local) > 0 {
		pr.chain(pn.svl, pr.balance(pn.svl, p.Local))
	}
	if pr.usesExt {
		pr.chain(pn.ext, pr.external())
	}
	if pr.usesFW {
		pr.chain(pn.fw, pr.firewall())
	}
	// The KUBE-SEP chains and their rules are allocated together: they are
	// most of a render's allocations.
	n := len(p.Cluster) + len(p.Local)
	seen := make(map[netip.AddrPort]bool, n)
	slab := endpointSlab{chains: make([]Chain, 0, n), rules: make([]Rule, 0, 2*n)}
	for _, eps := range [][]model.Endpoint{p.Cluster, p.Local} {
		for _, e := range eps {
			if ap := e.AddrPort(); !seen[ap] {
				seen[ap] = true
				pr.endpointChain(ap, &slab)
			}
		}
	}
}

type endpointSlab struct {
	chains []Chain
	rules  []Rule
}

// balance is a KUBE-SVC or KUBE-SVL chain: the masquerade rule when it
// serves cluster IP traffic, then affinity and the random split: rule i of
// n matches with probability 1/(n-i), so each endpoint gets 1/n.
func (pr *portRender) balance(chain string, eps []model.Endpoint) []Rule {
	p, cm := pr.p, &pr.pn.comment
	n := len(eps)
	size := n + len(p.ClusterIPs)
	if p.AffinityTimeout > 0 {
		size += n
	}
	rules := make([]Rule, 0, size)
	if chain == pr.internalChain {
		for _, ip := range p.ClusterIPs {
			r := Rule{Rule: xtables.Rule{Comment: cm.clusterIP, Proto: pr.proto, Dst: hostPrefix(ip), DPort: uint16(p.Port), Jump: chainMarkMasq}}
			switch {
			case pr.g.masqAll:
			case pr.g.clusterCIDR.IsValid():
				// Masquerade what comes from outside the pod network:
				// the reply must come back through this node.
				r.Src, r.NotSrc = pr.g.clusterCIDR, true
			default:
				continue
			}
			rules = append(rules, r)
		}
	}
	comment := func(en *endpointNames) string {
		if pr.g.largeCluster {
			return ""
		}
		return en.comment
	}
	if p.AffinityTimeout > 0 {
		for _, e := range eps {
			en := pr.pn.endpoint(e.AddrPort())
			rules = append(rules, Rule{Rule: xtables.Rule{Comment: comment(en), Recent: &Recent{Name: en.chain, Seconds: p.AffinityTimeout}, Jump: en.chain}, Endpoint: e.AddrPort()})
		}
	}
	for i, e := range eps {
		en := pr.pn.endpoint(e.AddrPort())
		r := Rule{Rule: xtables.Rule{Comment: comment(en), Jump: en.chain}, Endpoint: e.AddrPort()}
		if i < n-1 {
			r.Probability = 1 / float64(n-i)
		}
		rules = append(rules, r)
	}
	return rules
}

// external is the KUBE-EXT chain every external destination (NodePort,
// external IP, LoadBalancer IP) jumps to.
func (pr *portRender) external() []Rule {
	p, pn, cm := pr.p, pr.pn, &pr.pn.comment
	var rules []Rule
	if !p.ExternalPolicyLocal {
		// Cluster endpoints may be on another node: masquerade so the
		// reply comes back through this one.
		rules = append(rules, Rule{Rule: xtables.Rule{Comment: cm.masqExternal, Jump: chainMarkMasq}})
	} else if len(p.Cluster) > 0 {
		// Traffic from this node's pods and the node itself is not
		// external: it may use every endpoint (the short circuit).
		if pr.g.clusterCIDR.IsValid() {
			rules = append(rules, Rule{Rule: xtables.Rule{Comment: cm.podExternal, Src: pr.g.clusterCIDR, Jump: pn.svc}})
		}
		// The node's own traffic needs masquerading: its source address
		// would be the LoadBalancer or node IP itself.
		rules = append(rules,
			Rule{Rule: xtables.Rule{Comment: cm.masqLocal, SrcLocal: true, Jump: chainMarkMasq}},
			Rule{Rule: xtables.Rule{Comment: cm.routeLocal, SrcLocal: true, Jump: pn.svc}})
	}
	if pr.hasExternal {
		rules = append(rules, Rule{Rule: xtables.Rule{Jump: pr.externalChain}})
	}
	return rules
}

// firewall is the KUBE-FW chain: clients in the source ranges go on to
// KUBE-EXT; the rest fall through un-DNATed and KUBE-PROXY-FIREWALL in
// the filter table drops them.
func (pr *portRender) firewall() []Rule {
	p, pn, cm := pr.p, pr.pn, &pr.pn.comment
	var rules []Rule
	fromNode := false
	for _, cidr := range p.LoadBalancerSourceRanges {
		rules = append(rules, Rule{Rule: xtables.Rule{Comment: cm.lbIP, Src: cidr.Masked(), Jump: pn.ext}})
		fromNode = fromNode || (pr.g.nodeIP.IsValid() && cidr.Contains(pr.g.nodeIP))
	}
	if fromNode {
		// A VIP-like load balancer's IP is often a local address: the
		// node reaching it loops back with the VIP as source.
		for _, ip := range p.LoadBalancerIPs {
			rules = append(rules, Rule{Rule: xtables.Rule{Comment: cm.lbIP, Src: hostPrefix(ip), Jump: pn.ext}})
		}
	}
	return append(rules, Rule{Rule: xtables.Rule{Comment: cm.fwOther}})
}

// endpointChain is a KUBE-SEP chain: masquerade hairpin traffic (the
// endpoint reaching itself through the service), remember the client for
// affinity, and DNAT.
func (pr *portRender) endpointChain(ap netip.AddrPort, slab *endpointSlab) {
	en := pr.pn.endpoint(ap)
	comment := pr.pn.str
	if pr.g.largeCluster {
		comment = ""
	}
	dnat := Rule{Rule: xtables.Rule{Comment: comment, Proto: pr.proto, Jump: targetDNAT, ToDestination: ap}, Endpoint: ap, Service: pr.name}
	if pr.p.AffinityTimeout > 0 {
		dnat.Recent = &Recent{Name: en.chain, Set: true}
	}
	i := len(slab.rules)
	slab.rules = append(slab.rules,
		Rule{Rule: xtables.Rule{Comment: comment, Src: hostPrefix(ap.Addr()), Jump: chainMarkMasq}, Endpoint: ap, Service: pr.name},
		dnat)
	slab.chains = append(slab.chains, Chain{Table: TableNAT, Name: en.chain, Rules: slab.rules[i : i+2 : i+2], Service: pr.name})
	pr.sc.Chains = append(pr.sc.Chains, &slab.chains[len(slab.chains)-1])
}
