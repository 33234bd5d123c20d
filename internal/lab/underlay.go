package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"text/template"

	"github.com/kdive/kdive/internal/kernel"
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
	for _, k := range []string{"net.ipv4.conf.all.send_redirects", "net.ipv4.conf.default.send_redirects"} {
		if err := router.Sysctl(k, "0"); err != nil {
			return err
		}
	}
	// With br_netfilter loaded, bridged frames would also traverse the
	// router's forward hook; the subnets are plain L2 segments.
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
	if err := u.attachHost(router, p.External, "", "external client"); err != nil {
		return err
	}
	if err := router.AddAddr(p.External.RouterPort, netip.PrefixFrom(p.External.Gateway, p.External.CIDR.Bits())); err != nil {
		return err
	}
	return router.Nft(ctx, p.routerRuleset())
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
	for _, dst := range p.hostNetworks() {
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

var routerTmpl = template.Must(template.New("router").Parse(`
table inet {{.Table}}
delete table inet {{.Table}}
table inet {{.Table}} {
	comment "kdive lab {{.Lab}}: VPC source/destination check"
	# A host may only send with its own address ...
	set hosts {
		type ether_addr . ipv4_addr
		elements = { {{.Hosts}} }
	}
	# ... to another host. Pod addresses are neither, so pod traffic
	# crosses subnets only encapsulated between node addresses.
	set destinations {
		type ipv4_addr
		flags interval
		elements = { {{.Dests}} }
	}
	counter forwarded { }
	counter dropped { }
	# Checked before routing, so a packet to an address the router has no
	# route for (a pod's) is counted as dropped too, not silently lost.
	chain prerouting {
		type filter hook prerouting priority filter; policy accept;
		fib daddr type local accept
		ether saddr . ip saddr @hosts ip daddr @destinations counter name "forwarded" accept
		counter name "dropped" drop
	}
}
`))

func (p *Plan) routerRuleset() string {
	var hosts, dests []string
	all := []HostPlan{p.External}
	for _, n := range p.Nodes {
		all = append(all, n.HostPlan)
	}
	for _, h := range all {
		hosts = append(hosts, h.MAC+" . "+h.IP.String())
		dests = append(dests, h.IP.String())
	}
	var b strings.Builder
	_ = routerTmpl.Execute(&b, map[string]string{
		"Table": RouterTable, "Lab": p.Name,
		"Hosts": strings.Join(hosts, ", "), "Dests": strings.Join(dests, ", "),
	})
	return b.String()
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
	out, err := n.Run(ctx, "", "nft", "-j", "list", "counters", "table", "inet", RouterTable)
	if err != nil {
		return forwarded, dropped, err
	}
	var doc struct {
		Nftables []struct {
			Counter *struct {
				Name    string `json:"name"`
				Packets uint64 `json:"packets"`
				Bytes   uint64 `json:"bytes"`
			} `json:"counter"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		return forwarded, dropped, fmt.Errorf("parse router counters: %w", err)
	}
	for _, o := range doc.Nftables {
		if o.Counter == nil {
			continue
		}
		c := Counter{Packets: o.Counter.Packets, Bytes: o.Counter.Bytes}
		switch o.Counter.Name {
		case "forwarded":
			forwarded = c
		case "dropped":
			dropped = c
		}
	}
	return forwarded, dropped, nil
}
