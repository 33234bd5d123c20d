package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/nft"
	"github.com/kdive/kdive/internal/source/labstore"
)

// underlay builds a plan's namespaces and links. It keeps the namespaces it
// opened so the steps can share them; close releases them.
type underlay struct {
	plan *Plan
	ns   map[string]*kernel.NetNS // by netns name
}

func (u *underlay) close() {
	for _, n := range u.ns {
		n.Close()
	}
}

func (u *underlay) alias(what string) string { return "kdive-lab:" + u.plan.Name + " " + what }

func (u *underlay) create(name string) (*kernel.NetNS, error) {
	n, err := kernel.CreateNetNS(name)
	if err != nil {
		return nil, err
	}
	u.ns[name] = n
	// The lab's underlay is IPv4 only; without IPv6 no router
	// solicitations or MLD reports show up as noise in captures and in
	// the router's counters.
	for _, k := range []string{"net.ipv6.conf.all.disable_ipv6", "net.ipv6.conf.default.disable_ipv6"} {
		if err := n.Sysctl(k, "1"); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
	}
	return n, nil
}

// buildUnderlay creates the router, the subnets, the nodes and the external
// client. On error the caller tears the lab down.
func buildUnderlay(ctx context.Context, p *Plan) error {
	u := &underlay{plan: p, ns: map[string]*kernel.NetNS{}}
	defer u.close()
	router, err := u.create(p.Router.NetNS)
	if err != nil {
		return err
	}
	if err := router.Sysctl("net.ipv4.ip_forward", "1"); err != nil {
		return err
	}
	// Multipath routes to service addresses hash ports too (see
	// syncRouter), so connections from one client spread over nodes.
	if err := router.Sysctl("net.ipv4.fib_multipath_hash_policy", "1"); err != nil {
		return err
	}
	for _, k := range []string{"net.ipv4.conf.all.send_redirects", "net.ipv4.conf.default.send_redirects"} {
		if err := router.Sysctl(k, "0"); err != nil {
			return err
		}
	}
	// With br_netfilter loaded, bridged frames would also traverse the
	// router's IP hooks, and its source/destination check would drop pod
	// traffic between nodes of one subnet. The module's sysctls appear,
	// set to 1 in every namespace, whenever anyone loads it (a bridge-mode
	// agent does), so load it now and turn it off here. Without the module
	// (a kernel without it) there is nothing to guard.
	_ = kernel.LoadModule(ctx, "br_netfilter")
	for _, k := range []string{"net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-arptables"} {
		if err := router.Sysctl(k, "0"); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	for _, s := range p.Subnets {
		if err := router.AddBridge(s.Bridge, kernel.LinkAttrs{MTU: p.MTU, Alias: u.alias("subnet " + s.Name)}); err != nil {
			return err
		}
		if err := router.AddAddr(s.Bridge, netip.PrefixFrom(s.Gateway, s.CIDR.Bits())); err != nil {
			return err
		}
		if err := router.LinkUp(s.Bridge); err != nil {
			return err
		}
	}
	for _, n := range p.Nodes {
		if err := u.attachHost(router, n.HostPlan, p.bridgeOf(n.Subnet), "node "+n.Name); err != nil {
			return err
		}
		if err := u.ns[n.NetNS].Sysctl("net.ipv4.ip_forward", "1"); err != nil {
			return err
		}
	}
	if k := p.Kubernetes; k != nil {
		if err := u.attachHost(router, k.ControlPlane, p.Subnets[0].Bridge, "Kubernetes control plane"); err != nil {
			return err
		}
	}
	if err := u.attachHost(router, p.External, "", "external client"); err != nil {
		return err
	}
	if err := router.AddAddr(p.External.RouterPort, netip.PrefixFrom(p.External.Gateway, p.External.CIDR.Bits())); err != nil {
		return err
	}
	return nft.New(router).Run(ctx, p.routerRuleset())
}

// attachHost creates a host namespace whose eth0 is a veth to the router,
// enslaved to bridge when it is not empty, and gives it routes to every
// other lab network through its gateway. No default route: nothing leaves
// the lab.
func (u *underlay) attachHost(router *kernel.NetNS, h HostPlan, bridge, what string) error {
	n, err := u.create(h.NetNS)
	if err != nil {
		return err
	}
	mac, _ := net.ParseMAC(h.MAC)
	p := u.plan
	if err := router.AddVeth(h.RouterPort, kernel.LinkAttrs{MTU: p.MTU, Alias: u.alias(what)},
		n, "eth0", kernel.LinkAttrs{MAC: mac, MTU: p.MTU, Alias: u.alias("uplink of " + what)}); err != nil {
		return err
	}
	if bridge != "" {
		if err := router.SetMaster(h.RouterPort, bridge); err != nil {
			return err
		}
	}
	if err := router.LinkUp(h.RouterPort); err != nil {
		return err
	}
	if err := n.AddAddr("eth0", netip.PrefixFrom(h.IP, h.CIDR.Bits())); err != nil {
		return err
	}
	if err := n.LinkUp("eth0"); err != nil {
		return err
	}
	dsts := p.hostNetworks()
	if h.Name == ExternalName {
		dsts = append(dsts, p.LoadBalancerCIDR)
	} else {
		// What a node's default route does on a real node: give cluster
		// and LoadBalancer IPs a route, which the proxy's DNAT redirects
		// and its filters drop in forward (the router drops whatever
		// escapes).
		dsts = append(dsts, p.ServiceCIDR, p.LoadBalancerCIDR)
	}
	for _, dst := range dsts {
		if dst == h.CIDR {
			continue
		}
		if err := n.ReplaceRoute(kernel.Route{Dst: dst, Gateway: h.Gateway, Dev: "eth0"}); err != nil {
			return err
		}
	}
	return nil
}

func (p *Plan) bridgeOf(subnet string) string {
	for _, s := range p.Subnets {
		if s.Name == subnet {
			return s.Bridge
		}
	}
	return ""
}

// lbRouteProtocol marks the router's routes to service addresses.
const lbRouteProtocol = 0x6d

// syncRouter points the router at the nodes for every LoadBalancer and
// external IP of the lab's services, as a cloud load balancer spreads
// them over its backends: over the nodes that run a ready endpoint of the
// service when its externalTrafficPolicy is Local (a cloud LB learns that
// from the health check port), over every node when it is Cluster. The
// spread is a multipath route hashed on addresses and ports, so each
// connection keeps its node and new ones spread. A service with ClientIP
// session affinity goes to one node (the first of them), as a cloud LB
// hashes such a service on the client address alone; with its one
// client (the lab's external one) that is one node. With no node to
// choose (Local, no ready endpoint) the address goes to the first node.
// It also lets nodes answer from those addresses. One nft transaction
// replaces the sets.
func (p *Plan) syncRouter(ctx context.Context, snap *labstore.Snapshot) error {
	router, err := kernel.OpenNetNS(p.Router.NetNS)
	if err != nil {
		return err
	}
	defer router.Close()
	targets := p.routerTargets(snap)
	tx := nft.NewTransaction(routerTable)
	tx.Flush(&nft.Set{Name: "service_addrs"})
	tx.Flush(&nft.Set{Name: "service_sources"})
	for a := range targets {
		tx.Add(&nft.Element{Set: "service_addrs", Key: []string{a.String()}})
		for _, n := range p.Nodes {
			tx.Add(&nft.Element{Set: "service_sources", Key: []string{n.MAC, a.String()}})
		}
	}
	if err := nft.New(router).Run(ctx, tx); err != nil {
		return fmt.Errorf("router service addresses: %w", err)
	}
	routes, err := router.Routes()
	if err != nil {
		return err
	}
	for _, r := range routes {
		if r.Protocol == lbRouteProtocol {
			if _, ok := targets[r.Dst.Addr()]; !ok {
				if err := router.DeleteRoute(r); err != nil {
					return err
				}
			}
		}
	}
	for a, nodes := range targets {
		if err := router.ReplaceRoute(p.routeToNodes(a, nodes)); err != nil {
			return err
		}
	}
	return nil
}

// routerTargets maps every IPv4 LoadBalancer and external IP of the
// lab's services to the nodes the router spreads it over (see
// syncRouter), in the plan's order.
func (p *Plan) routerTargets(snap *labstore.Snapshot) map[netip.Addr][]NodePlan {
	targets := map[netip.Addr][]NodePlan{}
	for i := range snap.Services {
		svc := &snap.Services[i]
		var addrs []string
		for _, ing := range svc.Status.LoadBalancer.Ingress {
			addrs = append(addrs, ing.IP)
		}
		addrs = append(addrs, svc.Spec.ExternalIPs...)
		nodes := p.Nodes
		if svc.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal {
			nodes = p.nodesWithEndpoint(svc, snap)
		}
		if len(nodes) == 0 {
			nodes = p.Nodes[:1]
		}
		if svc.Spec.SessionAffinity == corev1.ServiceAffinityClientIP {
			nodes = nodes[:1]
		}
		for _, s := range addrs {
			if a, err := netip.ParseAddr(s); err == nil && a.Is4() {
				targets[a] = nodes
			}
		}
	}
	return targets
}

// routeToNodes is the router's route to the service address a: through
// the one node, or a multipath route over several.
func (p *Plan) routeToNodes(a netip.Addr, nodes []NodePlan) kernel.Route {
	r := kernel.Route{Dst: netip.PrefixFrom(a, 32), Protocol: lbRouteProtocol}
	if len(nodes) == 1 {
		r.Gateway, r.Dev = nodes[0].IP, p.bridgeOf(nodes[0].Subnet)
		return r
	}
	for _, n := range nodes {
		r.Nexthops = append(r.Nexthops, kernel.Nexthop{Gateway: n.IP, Dev: p.bridgeOf(n.Subnet)})
	}
	return r
}

// nodesWithEndpoint are the nodes running a ready endpoint of svc.
func (p *Plan) nodesWithEndpoint(svc *corev1.Service, snap *labstore.Snapshot) []NodePlan {
	on := map[string]bool{}
	for _, sl := range snap.EndpointSlices {
		if sl.Namespace != svc.Namespace || sl.Labels[discoveryv1.LabelServiceName] != svc.Name {
			continue
		}
		for _, e := range sl.Endpoints {
			if e.NodeName != nil && e.Conditions.Ready != nil && *e.Conditions.Ready {
				on[*e.NodeName] = true
			}
		}
	}
	var out []NodePlan
	for _, n := range p.Nodes {
		if on[n.Name] {
			out = append(out, n)
		}
	}
	return out
}

// hostNetworks are the underlay networks: the subnets and the external one.
func (p *Plan) hostNetworks() []netip.Prefix {
	var out []netip.Prefix
	for _, s := range p.Subnets {
		out = append(out, s.CIDR)
	}
	return append(out, p.External.CIDR)
}

// RouterTable is the nftables table holding the router's VPC check.
const RouterTable = "kdive_underlay"

// routerTable is the router's table, as the nft door names it.
var routerTable = nft.Table{Family: nft.Inet, Name: RouterTable}

// routerRuleset replaces the router's table: the VPC source/destination
// check.
func (p *Plan) routerRuleset() *nft.Transaction {
	tx := nft.NewTransaction(routerTable)
	tx.Add(&nft.Table{})
	tx.Delete(&nft.Table{})
	tx.Add(&nft.Table{Comment: "kdive lab " + p.Name + ": VPC source/destination check"})
	sets := []*nft.Set{
		// A host may only send with its own address ...
		{Name: "hosts", Type: "ether_addr . ipv4_addr"},
		// ... to another host. Pod addresses are neither, so pod traffic
		// crosses subnets only encapsulated between node addresses.
		{Name: "destinations", Type: "ipv4_addr", Flags: []string{"interval"}},
		// LoadBalancer and external IPs the router forwards to a node,
		// and the nodes that may answer from them (kept up to date by the
		// lab).
		{Name: "service_addrs", Type: "ipv4_addr"},
		{Name: "service_sources", Type: "ether_addr . ipv4_addr"},
		// A Kubernetes lab's pod blocks, routed to their nodes as a
		// cloud's route table does (filled once the controller-manager
		// has handed them out), the nodes that may send from them, the
		// hosts that may reach them and the addresses pods may answer:
		// the control plane only (the API server proxies to pods), unless
		// the pod network is the cloud's own (podNetwork.interface none:
		// then pods of every node reach each other and the hosts through
		// the router).
		{Name: "pod_blocks", Type: "ipv4_addr", Flags: []string{"interval"}},
		{Name: "pod_sources", Type: "ether_addr . ipv4_addr", Flags: []string{"interval"}},
		{Name: "pod_peers", Type: "ether_addr . ipv4_addr"},
		{Name: "pod_answered", Type: "ipv4_addr", Flags: []string{"interval"}},
	}
	for _, s := range sets {
		tx.Add(s)
	}
	tx.Add(&nft.Counter{Name: "forwarded"})
	tx.Add(&nft.Counter{Name: "dropped"})
	// Checked before routing, so a packet to an address the router has no
	// route for (a pod's) is counted as dropped too, not silently lost.
	tx.Add(&nft.Chain{Name: "prerouting", Type: "filter", Hook: "prerouting", Priority: "filter"})
	rules := []string{
		"fib daddr type local accept",
		"ether saddr . ip saddr @hosts ip daddr @destinations counter name \"forwarded\" accept",
		"ether saddr . ip saddr @hosts ip daddr @service_addrs counter name \"forwarded\" accept",
		"ether saddr . ip saddr @service_sources ip daddr @destinations counter name \"forwarded\" accept",
		"ether saddr . ip saddr @pod_peers ip daddr @pod_blocks counter name \"forwarded\" accept",
		"ether saddr . ip saddr @pod_sources ip daddr @pod_answered counter name \"forwarded\" accept",
	}
	if p.cloudPodNetwork() {
		rules = append(rules, "ether saddr . ip saddr @pod_sources ip daddr @pod_blocks counter name \"forwarded\" accept")
	}
	for _, r := range append(rules, "counter name \"dropped\" drop") {
		tx.Add(&nft.Rule{Chain: "prerouting", Rule: r})
	}
	var cluster []HostPlan
	if k := p.Kubernetes; k != nil {
		cluster = []HostPlan{k.ControlPlane}
		if p.cloudPodNetwork() {
			for _, n := range p.Nodes {
				cluster = append(cluster, n.HostPlan)
			}
		}
	}
	// Each set's elements together: one command each.
	for _, e := range []struct {
		set   string
		hosts []HostPlan
		mac   bool
	}{{"hosts", p.hosts(), true}, {"destinations", p.hosts(), false}, {"pod_peers", cluster, true}, {"pod_answered", cluster, false}} {
		for _, h := range e.hosts {
			key := []string{h.IP.String()}
			if e.mac {
				key = []string{h.MAC, h.IP.String()}
			}
			tx.Add(&nft.Element{Set: e.set, Key: key})
		}
	}
	return tx
}

// Counter is a packet and byte count read from the kernel.
type Counter struct {
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

// RouterCounters reads how many packets the router forwarded and dropped.
func RouterCounters(ctx context.Context, p *Plan) (forwarded, dropped Counter, err error) {
	n, err := kernel.OpenNetNS(p.Router.NetNS)
	if err != nil {
		return forwarded, dropped, err
	}
	defer n.Close()
	l, err := nft.New(n).List(ctx, routerTable)
	if err != nil {
		return forwarded, dropped, err
	}
	for _, c := range l.Counters {
		switch c.Name {
		case "forwarded":
			forwarded = Counter{Packets: c.Packets, Bytes: c.Bytes}
		case "dropped":
			dropped = Counter{Packets: c.Packets, Bytes: c.Bytes}
		}
	}
	return forwarded, dropped, nil
}
