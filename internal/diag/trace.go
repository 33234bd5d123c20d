package diag

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy"
)

// InspectFunc reads a proxy mode's kernel state in a node's namespace
// (InspectProxy in production; tests may pass another).
type InspectFunc func(ctx context.Context, ns *kernel.NetNS, mode string) (proxy.Inspection, error)

// TraceRequest is `kdive trace --lab LAB --from FROM --to TO [--proto P]`.
type TraceRequest struct {
	Lab string
	// From is a pod (namespace/name or a unique bare name), a node,
	// "external" or "router".
	From string
	// To is a service (namespace/name[:port]), a pod[:port] (port 8080
	// when omitted: the echo servers' default) or IP[:PORT].
	To string
	// Proto is TCP (default) or UDP; a service port's own protocol wins
	// when the port is named.
	Proto model.Protocol
	// Probe also sends one real request and reports what conntrack saw.
	Probe   bool
	Inspect InspectFunc
}

// TraceReport is a trace's answer: where the packet starts, the
// load-balancing stage if the destination is a service address, and one
// branch per endpoint it may go to, each with its path and the reply's.
type TraceReport struct {
	Lab      string        `json:"lab"`
	Mode     string        `json:"mode"`
	From     TraceEnd      `json:"from"`
	To       TraceEnd      `json:"to"`
	Proto    string        `json:"protocol"`
	Source   []TraceStep   `json:"source"`
	LB       *TraceLB      `json:"lb,omitempty"`
	Branches []TraceBranch `json:"branches"`
	Probe    *TraceProbe   `json:"probe,omitempty"`
}

// TraceEnd names one end of the trace.
type TraceEnd struct {
	Kind string         `json:"kind"` // pod, node, external, router, service, ip
	Name string         `json:"name"`
	Node string         `json:"node,omitempty"`
	Addr netip.AddrPort `json:"addr"`
}

// TraceStep is one thing that happens to the packet, in a namespace.
type TraceStep struct {
	At   string `json:"at"`
	What string `json:"what"`
}

// TraceLB is the load-balancing stage, read from the kernel.
type TraceLB struct {
	Node     string   `json:"node"`
	Service  string   `json:"service,omitempty"`
	AddrKind string   `json:"addrKind,omitempty"`
	Verdict  string   `json:"verdict"`
	Affinity int      `json:"affinitySeconds,omitempty"`
	Rules    []string `json:"rules"`
}

// TraceBranch is one endpoint the connection may go to.
type TraceBranch struct {
	Endpoint    netip.AddrPort `json:"endpoint"`
	Pod         string         `json:"pod,omitempty"`
	Node        string         `json:"node,omitempty"`
	Probability float64        `json:"probability"`
	Masquerade  bool           `json:"masquerade"`
	// Encap is how it crosses between nodes: local, direct, ipip, vxlan
	// (or dropped); Underlay says whether the router carries it.
	Encap    string      `json:"encap"`
	Underlay string      `json:"underlay"`
	Path     []TraceStep `json:"path"`
	Reply    []TraceStep `json:"reply"`
	// Delivered is false when the path ends in a drop.
	Delivered bool `json:"delivered"`
}

// TraceProbe is what one real request observed.
type TraceProbe struct {
	Sent      bool           `json:"sent"`
	Error     string         `json:"error,omitempty"`
	Answered  string         `json:"answeredBy,omitempty"` // the echo server's pod
	Endpoint  netip.AddrPort `json:"endpoint,omitempty"`   // conntrack's reply source
	Conntrack string         `json:"conntrack,omitempty"`
	Predicted bool           `json:"predicted"` // the observed endpoint is one of the branches
}

// Trace predicts the path of a connection over the kernel's actual state
// of a lab: the routes of each namespace on the way, the proxy's rules on
// the node that load-balances, tunnels and their FDB.
func Trace(ctx context.Context, req TraceRequest) (*TraceReport, error) {
	tl, err := openTraceLab(ctx, req.Lab)
	if err != nil {
		return nil, err
	}
	defer tl.close()
	from, err := tl.place(req.From)
	if err != nil {
		return nil, fmt.Errorf("--from: %w", err)
	}
	if from.Kind == "router" {
		return nil, errors.New("--from: the router forwards; trace from a pod, a node or external")
	}
	rep := &TraceReport{Lab: req.Lab, Mode: tl.mode}
	rep.From = TraceEnd{Kind: from.Kind, Name: from.Name, Node: from.Node, Addr: netip.AddrPortFrom(from.IP, 0)}
	proto := req.Proto
	if proto == "" {
		proto = model.ProtocolTCP
	}
	dst, proto, err := tl.destination(req.To, proto)
	if err != nil {
		return nil, fmt.Errorf("--to: %w", err)
	}
	rep.To, rep.Proto = dst, string(proto)

	// To the first node: the source's own routing.
	entry, steps, err := tl.toFirstNode(from, dst.Addr.Addr())
	rep.Source = steps
	if err != nil {
		return nil, err
	}
	if entry == nil {
		rep.Branches = []TraceBranch{{Endpoint: dst.Addr, Encap: "dropped", Path: nil}}
		return rep, nil
	}

	// The load-balancing stage on that node, from its kernel state.
	ns, err := entry.open()
	if err != nil {
		return nil, err
	}
	type target struct {
		ep   netip.AddrPort
		p    float64
		masq bool
	}
	targets := []target{{ep: dst.Addr, p: 1}}
	if req.Inspect != nil && tl.mode != "" {
		insp, err := req.Inspect(ctx, ns, tl.mode)
		if err != nil {
			return nil, fmt.Errorf("read %s proxy state of %s: %w", tl.mode, entry.Name, err)
		}
		pkt := proxy.Packet{Src: from.IP, Proto: proto, Dst: dst.Addr.Addr(), Port: int(dst.Addr.Port()), FromNode: from.Kind == "node"}
		svc, kind := insp.LB().Lookup(proto, dst.Addr)
		if svc != nil {
			res := insp.Trace(pkt)
			lb := &TraceLB{Node: entry.Name, Service: svc.NameText, AddrKind: string(kind), Verdict: string(res.Verdict),
				Affinity: svc.AffinitySeconds, Rules: insp.Explain(pkt)}
			rep.LB = lb
			if res.Verdict != proxy.DNAT {
				rep.Branches = []TraceBranch{}
				return rep, nil
			}
			shares := svc.Internal
			if kind != proxy.KindClusterIP && from.Kind == "external" {
				shares = svc.External
			}
			targets = targets[:0]
			for epText, masq := range res.Endpoints {
				ep, err := netip.ParseAddrPort(epText)
				if err != nil {
					continue
				}
				p := 0.0
				for _, s := range shares {
					if s.Addr == ep {
						p = s.Probability
					}
				}
				if p == 0 {
					p = 1 / float64(len(res.Endpoints))
				}
				targets = append(targets, target{ep: ep, p: p, masq: masq})
			}
		}
	}
	for _, t := range targets {
		b := TraceBranch{Endpoint: t.ep, Probability: t.p, Masquerade: t.masq}
		if owner := tl.byAddr[t.ep.Addr()]; owner != nil {
			b.Pod, b.Node = podName(owner), owner.Node
			if owner.Kind == "node" {
				b.Node = owner.Name
			}
		}
		if t.ep != dst.Addr {
			b.Path = append(b.Path, TraceStep{At: entry.Name, What: fmt.Sprintf("DNAT %s -> %s", dst.Addr, t.ep)})
		}
		w := tl.forward(entry, t.ep.Addr())
		b.Path = append(b.Path, w.steps...)
		b.Encap, b.Underlay, b.Delivered = w.encap, w.underlay, w.delivered
		if b.Delivered && w.end != nil {
			b.Reply = tl.reply(w.end, from, entry, t.masq, dst.Addr, t.ep)
		}
		rep.Branches = append(rep.Branches, b)
	}
	sortBranches(rep.Branches)
	if req.Probe {
		rep.Probe = tl.probe(ctx, from, entry, dst, proto, rep.Branches)
	}
	return rep, nil
}

func podName(p *tracePlace) string {
	if p.Kind == "pod" {
		return p.Name
	}
	return ""
}

// destination resolves --to.
func (tl *traceLab) destination(to string, proto model.Protocol) (TraceEnd, model.Protocol, error) {
	// IP[:PORT]
	if ap, err := netip.ParseAddrPort(to); err == nil {
		return TraceEnd{Kind: "ip", Name: to, Addr: ap}, proto, nil
	}
	if a, err := netip.ParseAddr(to); err == nil {
		return TraceEnd{Kind: "ip", Name: to, Addr: netip.AddrPortFrom(a, 8080)}, proto, nil
	}
	name, port, hasPort := strings.Cut(to, ":")
	// A service namespace/name[:port].
	if ns, svcName, ok := strings.Cut(name, "/"); ok {
		for _, s := range tl.st.Services {
			if s.Namespace != ns || s.Name != svcName {
				continue
			}
			ip, err := netip.ParseAddr(s.ClusterIP)
			if err != nil {
				break // headless: look for a pod of that name below
			}
			for _, pt := range s.Ports {
				if (!hasPort && len(s.Ports) == 1) || pt.Name == port || strconv.Itoa(int(pt.Port)) == port ||
					(!hasPort && model.Protocol(pt.Protocol) == proto) {
					label := s.Namespace + "/" + s.Name
					if pt.Name != "" {
						label += ":" + pt.Name
					}
					return TraceEnd{Kind: "service", Name: label, Addr: netip.AddrPortFrom(ip, uint16(pt.Port))}, model.Protocol(pt.Protocol), nil
				}
			}
			return TraceEnd{}, "", fmt.Errorf("service %s/%s has no port %q", ns, svcName, port)
		}
	}
	p, err := tl.place(name)
	if err != nil {
		return TraceEnd{}, "", err
	}
	n := 8080
	if hasPort {
		if n, err = strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return TraceEnd{}, "", fmt.Errorf("port %q: want 1-65535", port)
		}
	}
	return TraceEnd{Kind: p.Kind, Name: p.Name, Node: p.Node, Addr: netip.AddrPortFrom(p.IP, uint16(n))}, proto, nil
}
