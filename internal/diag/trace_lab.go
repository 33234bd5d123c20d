package diag

import (
	"context"
	"fmt"
	"net/netip"
	"strings"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/lab"
)

// A trace walks a lab's namespaces: each place is a namespace with the
// addresses it holds, so a next hop the kernel picks can be followed to
// the namespace that owns it.

// tracePlace is one namespace of a lab along a packet's path.
type tracePlace struct {
	Kind string // pod, node, router, external, host (a Kubernetes lab's control plane)
	Name string // "default/web-0", "node-1", "router", "external", "control-plane"
	Node string // a pod's node
	IP   netip.Addr
	// Subnet is a host's underlay subnet, Block a node's pod block.
	Subnet, Block netip.Prefix
	nsName        string
	ns            *kernel.NetNS
}

func (p *tracePlace) String() string {
	if p.Kind == "pod" {
		return "pod " + p.Name
	}
	return p.Name
}

// traceLab is a lab as a trace needs it.
type traceLab struct {
	st       *lab.Status
	mode     string
	podCIDR  netip.Prefix
	places   []*tracePlace
	byAddr   map[netip.Addr]*tracePlace
	byName   map[string]*tracePlace
	podNames map[string][]*tracePlace // bare name -> pods
}

func openTraceLab(ctx context.Context, name string) (*traceLab, error) {
	s, err := lab.Load(name)
	if err != nil {
		return nil, err
	}
	st := lab.GetStatus(ctx, s)
	tl := &traceLab{st: st, mode: st.Proxy.Mode, byAddr: map[netip.Addr]*tracePlace{}, byName: map[string]*tracePlace{}, podNames: map[string][]*tracePlace{}}
	tl.podCIDR, _ = netip.ParsePrefix(st.PodCIDR)
	add := func(p *tracePlace) {
		tl.places = append(tl.places, p)
		tl.byName[p.Name] = p
	}
	for _, n := range st.Nodes {
		p := &tracePlace{Kind: "node", Name: n.Name, nsName: n.NetNS}
		p.IP, _ = netip.ParseAddr(n.IP)
		p.Block, _ = netip.ParsePrefix(n.PodCIDR)
		add(p)
	}
	ext := &tracePlace{Kind: "external", Name: lab.ExternalName, nsName: st.External.NetNS}
	ext.IP, _ = netip.ParseAddr(st.External.IP)
	add(ext)
	add(&tracePlace{Kind: "router", Name: lab.RouterName, nsName: st.Router.NetNS})
	if cp := st.ControlPlane; cp != nil {
		p := &tracePlace{Kind: "host", Name: lab.ControlPlaneName, nsName: cp.NetNS}
		p.IP, _ = netip.ParseAddr(cp.IP)
		add(p)
	}
	for _, pod := range st.Pods {
		if pod.HostNetwork {
			// In its node's namespace: by its name, the node.
			if n, ok := tl.byName[pod.Node]; ok {
				tl.podNames[pod.Name] = append(tl.podNames[pod.Name], n)
				tl.byName[pod.Namespace+"/"+pod.Name] = n
			}
			continue
		}
		if pod.IP == "" {
			continue
		}
		p := &tracePlace{Kind: "pod", Name: pod.Namespace + "/" + pod.Name, Node: pod.Node, nsName: pod.NetNS}
		p.IP, _ = netip.ParseAddr(pod.IP)
		add(p)
		tl.podNames[pod.Name] = append(tl.podNames[pod.Name], p)
	}
	// Every address a namespace holds, except link-local ones (every
	// routed-mode node holds 169.254.1.1).
	for _, p := range tl.places {
		ns, err := p.open()
		if err != nil {
			continue // a pod not started yet: it owns its IP from the status
		}
		links, err := ns.Links()
		if err != nil {
			return nil, err
		}
		for _, l := range links {
			for _, a := range l.Addrs {
				if a.Addr().IsLoopback() || a.Addr().IsLinkLocalUnicast() {
					continue
				}
				tl.byAddr[a.Addr()] = p
				if p.Kind != "pod" && a.Addr() == p.IP {
					p.Subnet = a.Masked() // a host's uplink's subnet
				}
			}
		}
		if p.IP.IsValid() {
			tl.byAddr[p.IP] = p
		}
	}
	return tl, nil
}

func (p *tracePlace) open() (*kernel.NetNS, error) {
	if p.ns == nil {
		ns, err := kernel.OpenNetNS(p.nsName)
		if err != nil {
			return nil, err
		}
		p.ns = ns
	}
	return p.ns, nil
}

func (tl *traceLab) close() {
	for _, p := range tl.places {
		if p.ns != nil {
			p.ns.Close()
		}
	}
}

// place resolves a --from/--to name: a node, "router", "external", a pod
// as namespace/name or a bare name that is unique.
func (tl *traceLab) place(name string) (*tracePlace, error) {
	if p, ok := tl.byName[name]; ok {
		return p, nil
	}
	switch ps := tl.podNames[name]; len(ps) {
	case 1:
		return ps[0], nil
	case 0:
	default:
		var names []string
		for _, p := range ps {
			names = append(names, p.Name)
		}
		return nil, fmt.Errorf("%q is ambiguous: %s", name, strings.Join(names, ", "))
	}
	return nil, fmt.Errorf("no node, pod, router or external named %q in lab %s", name, tl.st.Name)
}

// nodeOf returns the node a place's traffic enters: a pod's node, or the
// place itself.
func (tl *traceLab) nodeOf(p *tracePlace) *tracePlace {
	if p.Kind == "pod" {
		return tl.byName[p.Node]
	}
	return p
}

// blockOwner returns the node whose pod block holds a.
func (tl *traceLab) blockOwner(a netip.Addr) *tracePlace {
	for _, p := range tl.places {
		if p.Kind == "node" && p.Block.Contains(a) {
			return p
		}
	}
	return nil
}
