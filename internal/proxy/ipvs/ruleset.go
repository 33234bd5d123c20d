package ipvs

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/xtables"
)

// Ruleset is the IPVS mode's whole desired state for one node, rendered
// from a Desired snapshot without touching the kernel: what Sync applies,
// what Trace follows packets through, what `show` prints.
type Ruleset struct {
	// NodeIPs are the node's own addresses (local, but not on kube-ipvs0).
	NodeIPs []netip.Addr
	// Addresses are bound to kube-ipvs0 as /32s: cluster IPs, external IPs
	// and LoadBalancer IPs that are not node addresses. Sorted.
	Addresses []netip.Addr
	// VirtualServers, sorted (address ones by address, protocol and port,
	// then firewall-mark ones by mark).
	VirtualServers []VirtualServer
	// Sets are every ipset of the mode, in a fixed order, each with its
	// entries sorted.
	Sets []Set
	// Chains are the mode's iptables chains with their rules, and Jumps
	// the rules that hook them into the built-in chains.
	Chains []Chain
	Jumps  []Jump
	// Warnings name services rendered differently than asked (an unknown
	// scheduler, an address:port two services claim).
	Warnings []string
	// names is the name index Sync keeps in KUBE-IPVS-NAMES (names.go).
	names []kernel.CommentedEntry
}

// Kind says which address of a service a virtual server serves.
type Kind string

const (
	KindClusterIP    Kind = "ClusterIP"
	KindExternalIP   Kind = "ExternalIP"
	KindLoadBalancer Kind = "LoadBalancer"
	KindNodePort     Kind = "NodePort"
	// KindShortCircuit is the firewall-mark virtual server that takes
	// traffic from this node and its pods to an externalTrafficPolicy:
	// Local service's external addresses to all its cluster endpoints, as
	// if it had gone out to a load balancer and come back.
	KindShortCircuit Kind = "ShortCircuit"
)

// VirtualServer is one IPVS virtual server with the real servers it
// should have and the service port it belongs to.
type VirtualServer struct {
	kernel.VirtualServer
	Service model.ServicePortName
	Kind    Kind
	// RealServers are the endpoints, sorted, all at weight 1 (Sync keeps
	// removed ones at weight 0 while their connections drain).
	RealServers []kernel.RealServer
}

// Key identifies a virtual server in the kernel.
func (v VirtualServer) Key() string { return v.VirtualServer.String() }

// Set is one ipset with its entries.
type Set struct {
	kernel.IPSetSpec
	// Match is how iptables rules match it (`--match-set NAME Match`).
	Match   string
	Comment string
	Entries []kernel.IPSetEntry
}

// Chain is one of the mode's iptables chains.
type Chain struct {
	Table string
	Name  string
	Rules []xtables.Rule
}

// Lines are the chain's rules as iptables-save prints them: "-A NAME ...".
func (c *Chain) Lines() []string {
	out := make([]string, len(c.Rules))
	for i := range c.Rules {
		out[i] = ruleLine(c.Name, &c.Rules[i])
	}
	return out
}

// Jump is a rule in a built-in chain that enters one of the mode's chains.
type Jump struct {
	Table string
	// Chain is the built-in chain.
	Chain string
	Rule  xtables.Rule
}

// Line is the jump as iptables-save prints it: "-A BUILTIN ... -j CHAIN".
func (j *Jump) Line() string { return ruleLine(j.Chain, &j.Rule) }

func ruleLine(chain string, r *xtables.Rule) string { return "-A " + chain + " " + r.String() }

// Set returns the named set.
func (r *Ruleset) Set(name string) *Set {
	for i := range r.Sets {
		if r.Sets[i].Name == name {
			return &r.Sets[i]
		}
	}
	return nil
}

// Chain returns the named chain of a table.
func (r *Ruleset) Chain(table, name string) *Chain {
	for i := range r.Chains {
		if r.Chains[i].Table == table && r.Chains[i].Name == name {
			return &r.Chains[i]
		}
	}
	return nil
}

// VirtualServer returns the virtual server with that key ("TCP
// 10.1.0.2:80", "FWM 268435457").
func (r *Ruleset) VirtualServer(key string) *VirtualServer {
	for i := range r.VirtualServers {
		if r.VirtualServers[i].Key() == key {
			return &r.VirtualServers[i]
		}
	}
	return nil
}

func compareVS(a, b VirtualServer) int {
	if (a.FWMark != 0) != (b.FWMark != 0) {
		if a.FWMark == 0 {
			return -1
		}
		return 1
	}
	return cmp.Or(cmp.Compare(a.FWMark, b.FWMark), a.Address.Compare(b.Address),
		cmp.Compare(a.Protocol, b.Protocol), cmp.Compare(a.Port, b.Port))
}

// IPVSText shows the virtual servers as `ipvsadm -Ln` does, each with the
// service port it belongs to.
func (r *Ruleset) IPVSText() string {
	var b strings.Builder
	b.WriteString("Prot LocalAddress:Port Scheduler Flags\n")
	b.WriteString("  -> RemoteAddress:Port           Forward Weight\n")
	for _, vs := range r.VirtualServers {
		fmt.Fprintf(&b, "%-4s %s %s%s  # %s %s\n", protoOrFWM(vs), vsAddr(vs), vs.Scheduler, flagsText(vs.VirtualServer),
			vs.Kind, vs.Service)
		for _, rs := range vs.RealServers {
			fmt.Fprintf(&b, "  -> %-28s Masq    %d\n", rs.Address, rs.Weight)
		}
	}
	return b.String()
}

func protoOrFWM(vs VirtualServer) string {
	if vs.FWMark != 0 {
		return "FWM"
	}
	return vs.Protocol
}

func vsAddr(vs VirtualServer) string {
	if vs.FWMark != 0 {
		return fmt.Sprintf("%d", vs.FWMark)
	}
	return netip.AddrPortFrom(vs.Address, vs.Port).String()
}

// flagsText is ipvsadm's flags column: " persistent 10800", " mh-fallback,mh-port".
func flagsText(v kernel.VirtualServer) string {
	var parts []string
	if v.Flags&kernel.IPVSFlagPersistent != 0 {
		parts = append(parts, fmt.Sprintf("persistent %d", v.Timeout))
	}
	var sched []string
	if v.Flags&kernel.IPVSFlagSched1 != 0 {
		sched = append(sched, v.Scheduler+"-fallback")
	}
	if v.Flags&kernel.IPVSFlagSched2 != 0 {
		sched = append(sched, v.Scheduler+"-port")
	}
	if len(sched) > 0 {
		parts = append(parts, strings.Join(sched, ","))
	}
	if len(parts) == 0 {
		return ""
	}
	return " " + strings.Join(parts, " ")
}

// SetsText shows the sets as `ipset list` members would.
func (r *Ruleset) SetsText() string {
	var b strings.Builder
	for _, s := range r.Sets {
		fmt.Fprintf(&b, "%s %s  # %s\n", s.Name, s.Type, s.Comment)
		for _, e := range s.Entries {
			fmt.Fprintf(&b, "  %s\n", e)
		}
	}
	return b.String()
}

// IptablesText is the mode's rules as iptables-save shows them, table by
// table, with the jumps from the built-in chains.
func (r *Ruleset) IptablesText() string {
	var b strings.Builder
	for _, table := range tables {
		fmt.Fprintf(&b, "*%s\n", table)
		for _, c := range r.Chains {
			if c.Table == table {
				fmt.Fprintf(&b, ":%s - [0:0]\n", c.Name)
			}
		}
		for _, j := range r.Jumps {
			if j.Table == table {
				b.WriteString(j.Line() + "\n")
			}
		}
		for _, c := range r.Chains {
			if c.Table == table {
				for _, l := range c.Lines() {
					b.WriteString(l + "\n")
				}
			}
		}
		b.WriteString("COMMIT\n")
	}
	return b.String()
}

// String is the whole plan: kube-ipvs0's addresses, the virtual servers,
// the sets and the iptables rules.
func (r *Ruleset) String() string {
	var addrs []string
	for _, a := range r.Addresses {
		addrs = append(addrs, a.String()+"/32")
	}
	return fmt.Sprintf("%s: %s\n\n%s\n%s\n%s", Device, strings.Join(addrs, " "),
		r.IPVSText(), r.SetsText(), r.IptablesText())
}

func sortEntries(es []kernel.IPSetEntry) []kernel.IPSetEntry {
	slices.SortFunc(es, func(a, b kernel.IPSetEntry) int { return cmp.Compare(a.String(), b.String()) })
	return slices.CompactFunc(es, func(a, b kernel.IPSetEntry) bool { return a.String() == b.String() })
}
