package proxy

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"

	"github.com/kdive/kdive/internal/model"
)

// The load-balancing table as the kernel holds it, whatever the mode:
// each backend reads its own kernel state back (nftables maps and chains,
// iptables KUBE-SVC/KUBE-SEP chains, IPVS virtual servers) into these
// types. `kdive show lb` prints them, `kdive trace` explains a packet with
// them, `kdive verify` compares them with ExpectedLB of the API objects.

// AddrKind says what kind of service address an LBAddress is.
type AddrKind string

const (
	KindClusterIP    AddrKind = "ClusterIP"
	KindNodePort     AddrKind = "NodePort"
	KindExternalIP   AddrKind = "ExternalIP"
	KindLoadBalancer AddrKind = "LoadBalancer"
)

// LBAddress is one address a service port answers on.
type LBAddress struct {
	Kind AddrKind       `json:"kind"`
	Addr netip.AddrPort `json:"addr"`
}

// LBEndpoint is one endpoint with the share of new connections it gets.
type LBEndpoint struct {
	Addr netip.AddrPort `json:"addr"`
	// Probability is the chance that a new connection (without affinity)
	// goes to this endpoint: 1/N for N equal endpoints. Derived from the
	// kernel's own numbers: nftables buckets, iptables statistic
	// probabilities, IPVS weights.
	Probability float64 `json:"probability"`
	// Weight is the IPVS weight (0 while draining); 0 in other modes.
	Weight int `json:"weight,omitempty"`
}

// LBService is one service port as the kernel load-balances it.
type LBService struct {
	// Name is "namespace/name:port" (the kernel's comments, chain names or
	// IPVS bookkeeping say which); Protocol its transport.
	Name     model.ServicePortName `json:"-"`
	NameText string                `json:"name"`
	Protocol model.Protocol        `json:"protocol"`
	// Addresses, sorted by kind then address.
	Addresses []LBAddress `json:"addresses"`
	// Internal are the endpoints for traffic to cluster IPs; External for
	// NodePorts, external IPs and LoadBalancer IPs from outside the node.
	// They differ under a Local traffic policy. Sorted by address.
	Internal []LBEndpoint `json:"internal"`
	External []LBEndpoint `json:"external,omitempty"`
	// AffinitySeconds is sessionAffinity ClientIP's timeout; 0: none.
	AffinitySeconds     int  `json:"affinitySeconds,omitempty"`
	ExternalPolicyLocal bool `json:"externalPolicyLocal,omitempty"`
	InternalPolicyLocal bool `json:"internalPolicyLocal,omitempty"`
	// SourceRanges are loadBalancerSourceRanges enforced on LB IPs.
	SourceRanges []netip.Prefix `json:"sourceRanges,omitempty"`
	// Counters are the kernel's packet and byte counts for the service,
	// where the mode keeps them (nil otherwise).
	Counters *Counters `json:"counters,omitempty"`
}

// Counters are packets and bytes the kernel counted.
type Counters struct {
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

// LBTable is a node's load-balancing table: its service ports in name
// order, and the settings that decide masquerading.
type LBTable struct {
	Mode     string         `json:"mode"`
	Services []LBService    `json:"services"`
	Cluster  []netip.Prefix `json:"clusterCIDRs,omitempty"`
	// MasqueradeAll: every connection to a service is masqueraded.
	MasqueradeAll bool `json:"masqueradeAll,omitempty"`
}

// Service returns the entry of a service port, or nil.
func (t *LBTable) Service(name model.ServicePortName) *LBService {
	for i := range t.Services {
		if t.Services[i].Name == name {
			return &t.Services[i]
		}
	}
	return nil
}

// Lookup returns the service port answering on addr for proto, with the
// kind of address it is, or nil.
func (t *LBTable) Lookup(proto model.Protocol, addr netip.AddrPort) (*LBService, AddrKind) {
	for i := range t.Services {
		s := &t.Services[i]
		if s.Protocol != proto {
			continue
		}
		for _, a := range s.Addresses {
			if a.Addr == addr {
				return s, a.Kind
			}
		}
	}
	return nil, ""
}

// Normalize sorts everything and fills NameText, so tables read from
// different modes compare equal when they mean the same.
func (t *LBTable) Normalize() {
	for i := range t.Services {
		s := &t.Services[i]
		s.NameText = s.Name.String()
		if s.Protocol == "" {
			s.Protocol = s.Name.Protocol
		}
		slices.SortFunc(s.Addresses, func(a, b LBAddress) int {
			return cmp.Or(cmp.Compare(a.Kind, b.Kind), a.Addr.Compare(b.Addr))
		})
		byAddr := func(a, b LBEndpoint) int { return a.Addr.Compare(b.Addr) }
		slices.SortFunc(s.Internal, byAddr)
		slices.SortFunc(s.External, byAddr)
		slices.SortFunc(s.SourceRanges, func(a, b netip.Prefix) int {
			return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
		})
	}
	slices.SortFunc(t.Services, func(a, b LBService) int {
		return cmp.Compare(a.NameText+"/"+string(a.Protocol), b.NameText+"/"+string(b.Protocol))
	})
	slices.SortFunc(t.Cluster, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
}

// ExpectedLB is the table a backend should have programmed for d: what
// the kernel's table must read back as. Every endpoint gets an equal
// share (1/N); External is set only for externally accessible ports.
// Weights and counters are left zero (compare with CompareLB).
func ExpectedLB(mode string, d *Desired) *LBTable {
	t := &LBTable{Mode: mode, Cluster: slices.Clone(d.Config.ClusterCIDRs), MasqueradeAll: d.Config.MasqueradeAll}
	for _, p := range d.Services {
		s := LBService{
			Name: p.Name, Protocol: p.Name.Protocol,
			AffinitySeconds:     p.AffinityTimeout,
			ExternalPolicyLocal: p.ExternalPolicyLocal, InternalPolicyLocal: p.InternalPolicyLocal,
			SourceRanges: slices.Clone(p.LoadBalancerSourceRanges),
		}
		for _, ip := range p.ClusterIPs {
			s.Addresses = append(s.Addresses, LBAddress{KindClusterIP, netip.AddrPortFrom(ip, uint16(p.Port))})
		}
		if p.NodePort != 0 {
			for _, ip := range d.NodePortIPs {
				s.Addresses = append(s.Addresses, LBAddress{KindNodePort, netip.AddrPortFrom(ip, uint16(p.NodePort))})
			}
		}
		for _, ip := range p.ExternalIPs {
			s.Addresses = append(s.Addresses, LBAddress{KindExternalIP, netip.AddrPortFrom(ip, uint16(p.Port))})
		}
		for _, ip := range p.LoadBalancerIPs {
			s.Addresses = append(s.Addresses, LBAddress{KindLoadBalancer, netip.AddrPortFrom(ip, uint16(p.Port))})
		}
		s.Internal = equalShares(p.InternalEndpoints())
		if p.ExternallyAccessible() {
			s.External = equalShares(p.ExternalEndpoints())
		}
		t.Services = append(t.Services, s)
	}
	t.Normalize()
	return t
}

func equalShares(eps []model.Endpoint) []LBEndpoint {
	out := make([]LBEndpoint, 0, len(eps))
	for _, e := range eps {
		out = append(out, LBEndpoint{Addr: e.AddrPort(), Probability: 1 / float64(len(eps))})
	}
	return out
}

// CompareLB lists how got (read from a kernel) differs from want (usually
// ExpectedLB): missing, extra or different service ports, addresses
// (LoadBalancer and ExternalIP count as one kind),
// endpoints and their shares (within 0.001), affinity, policies and
// source ranges. Weights and counters are not compared. Empty means equal.
func CompareLB(got, want *LBTable) []string {
	got.Normalize()
	want.Normalize()
	var diffs []string
	key := func(s *LBService) string { return s.NameText + "/" + string(s.Protocol) }
	gm := map[string]*LBService{}
	for i := range got.Services {
		gm[key(&got.Services[i])] = &got.Services[i]
	}
	seen := map[string]bool{}
	for i := range want.Services {
		w := &want.Services[i]
		k := key(w)
		seen[k] = true
		g := gm[k]
		if g == nil {
			diffs = append(diffs, fmt.Sprintf("%s: not programmed", k))
			continue
		}
		if !slices.Equal(comparableAddrs(g.Addresses), comparableAddrs(w.Addresses)) {
			diffs = append(diffs, fmt.Sprintf("%s: addresses %v, want %v", k, g.Addresses, w.Addresses))
		}
		for _, c := range []struct {
			what      string
			got, want []LBEndpoint
		}{{"internal endpoints", g.Internal, w.Internal}, {"external endpoints", g.External, w.External}} {
			if !sameShares(c.got, c.want) {
				diffs = append(diffs, fmt.Sprintf("%s: %s %s, want %s", k, c.what, sharesText(c.got), sharesText(c.want)))
			}
		}
		if g.AffinitySeconds != w.AffinitySeconds {
			diffs = append(diffs, fmt.Sprintf("%s: affinity %ds, want %ds", k, g.AffinitySeconds, w.AffinitySeconds))
		}
		if g.ExternalPolicyLocal != w.ExternalPolicyLocal || g.InternalPolicyLocal != w.InternalPolicyLocal {
			diffs = append(diffs, fmt.Sprintf("%s: traffic policy external/internal local %v/%v, want %v/%v", k,
				g.ExternalPolicyLocal, g.InternalPolicyLocal, w.ExternalPolicyLocal, w.InternalPolicyLocal))
		}
		if !slices.Equal(g.SourceRanges, w.SourceRanges) {
			diffs = append(diffs, fmt.Sprintf("%s: source ranges %v, want %v", k, g.SourceRanges, w.SourceRanges))
		}
	}
	for i := range got.Services {
		if k := key(&got.Services[i]); !seen[k] {
			diffs = append(diffs, fmt.Sprintf("%s: programmed but not wanted (stale)", k))
		}
	}
	return diffs
}

// comparableAddrs folds LoadBalancer into ExternalIP: in every mode the
// kernel handles both alike (only source ranges tell them apart), so a
// reader cannot always say which it is.
func comparableAddrs(as []LBAddress) []LBAddress {
	out := make([]LBAddress, len(as))
	for i, a := range as {
		if a.Kind == KindLoadBalancer {
			a.Kind = KindExternalIP
		}
		out[i] = a
	}
	slices.SortFunc(out, func(a, b LBAddress) int { return cmp.Or(cmp.Compare(a.Kind, b.Kind), a.Addr.Compare(b.Addr)) })
	return out
}

func sameShares(a, b []LBEndpoint) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Addr != b[i].Addr || a[i].Probability-b[i].Probability > 0.001 || b[i].Probability-a[i].Probability > 0.001 {
			return false
		}
	}
	return true
}

func sharesText(eps []LBEndpoint) string {
	s := "["
	for i, e := range eps {
		if i > 0 {
			s += " "
		}
		s += fmt.Sprintf("%s=%.3f", e.Addr, e.Probability)
	}
	return s + "]"
}

// Inspection is a proxy mode's kernel state read back from a node: each
// backend's Inspect returns one. Its answers are about what the kernel
// holds, not about what an agent meant to program.
type Inspection interface {
	// LB is the load-balancing table.
	LB() *LBTable
	// Trace is the fate of a connection's first packet.
	Trace(p Packet) Result
	// Explain lists, in order, the kernel objects the packet meets (hooks,
	// chains and the rules that match, maps and elements, IPVS virtual
	// servers), one line each, in the kernel's own terms.
	Explain(p Packet) []string
}
