package diag

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/proxy"
	"github.com/kdive/kdive/internal/proxy/iptables"
	"github.com/kdive/kdive/internal/proxy/ipvs"
	"github.com/kdive/kdive/internal/proxy/nftables"
)

// LBReport is `kdive show lb`: the node's load-balancing table as the
// kernel holds it, whatever the mode, with each endpoint's pod and node.
type LBReport struct {
	Node     string      `json:"node"`
	Mode     string      `json:"mode"`
	Services []LBService `json:"services"`
	Notes    []string    `json:"notes,omitempty"`
}

// LBService is one service port: proxy.LBService with its endpoints named.
type LBService struct {
	proxy.LBService
	Internal []LBEndpoint `json:"internal"`
	External []LBEndpoint `json:"external,omitempty"`
}

// LBEndpoint is an endpoint with the pod and node behind it, if known.
type LBEndpoint struct {
	proxy.LBEndpoint
	Pod  string `json:"pod,omitempty"`
	Node string `json:"node,omitempty"`
}

// LB reads the node's load-balancing table from the kernel. The mode is
// the lab's; on this machine, the first mode whose state is found
// (nftables, ipvs, iptables).
func LB(ctx context.Context, t Target) (*LBReport, error) {
	topo, err := t.Topology(ctx)
	if err != nil {
		return nil, err
	}
	ns, err := t.OpenNetNS()
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	insp, mode, err := inspectAny(ctx, ns, topo.ProxyMode)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", t, err)
	}
	tbl := insp.LB()
	rep := &LBReport{Node: topo.Node, Mode: mode, Services: []LBService{}, Notes: topo.Notes}
	name := func(eps []proxy.LBEndpoint) []LBEndpoint {
		out := make([]LBEndpoint, 0, len(eps))
		for _, e := range eps {
			le := LBEndpoint{LBEndpoint: e}
			if p, ok := topo.podByIP(e.Addr.Addr(), ""); ok {
				le.Pod, le.Node = p.FullName(), p.Node
			}
			out = append(out, le)
		}
		return out
	}
	for _, s := range tbl.Services {
		ls := LBService{LBService: s, Internal: name(s.Internal)}
		if s.External != nil {
			ls.External = name(s.External)
		}
		rep.Services = append(rep.Services, ls)
	}
	return rep, nil
}

// inspectAny reads the given mode's state, or finds which mode's state
// the node has.
func inspectAny(ctx context.Context, ns *kernel.NetNS, mode string) (proxy.Inspection, string, error) {
	if mode != "" {
		insp, err := InspectProxy(ctx, ns, mode)
		return insp, mode, err
	}
	var errs []error
	// ipvs before iptables: ipvs mode programs iptables chains of the
	// same names too.
	for _, m := range []string{nftables.Mode, ipvs.Mode, iptables.Mode} {
		insp, err := InspectProxy(ctx, ns, m)
		if err == nil && len(insp.LB().Services) > 0 {
			return insp, m, nil
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", m, err))
		}
	}
	return nil, "", fmt.Errorf("no proxy state of kdive found: %w", errors.Join(errs...))
}

// ShowLB writes `kdive show lb`.
func ShowLB(ctx context.Context, t Target, o Output) error {
	rep, err := LB(ctx, t)
	if err != nil {
		return err
	}
	if o.Format == FormatJSON {
		return o.JSON(rep)
	}
	var rows [][]string
	for _, s := range rep.Services {
		var addrs []string
		for _, a := range s.Addresses {
			addrs = append(addrs, string(a.Kind)+" "+a.Addr.String())
		}
		var extra []string
		if s.AffinitySeconds > 0 {
			extra = append(extra, fmt.Sprintf("affinity ClientIP %ds", s.AffinitySeconds))
		}
		if s.InternalPolicyLocal {
			extra = append(extra, "internalTrafficPolicy Local")
		}
		if s.ExternalPolicyLocal {
			extra = append(extra, "externalTrafficPolicy Local")
		}
		for _, r := range s.SourceRanges {
			extra = append(extra, "source range "+r.String())
		}
		if s.Counters != nil {
			extra = append(extra, fmt.Sprintf("%d packets, %d bytes", s.Counters.Packets, s.Counters.Bytes))
		}
		rows = append(rows, []string{s.NameText, string(s.Protocol), strings.Join(addrs, ", "), endpointsText(s.Internal), endpointsText(s.External), strings.Join(extra, "; ")})
	}
	fmt.Fprintf(o.W, "%s, proxy mode %s\n", t, rep.Mode)
	if err := o.Table([]string{"SERVICE", "PROTO", "ADDRESSES", "ENDPOINTS (cluster IPs)", "ENDPOINTS (external)", "NOTES"}, rows); err != nil {
		return err
	}
	return o.Notes(rep.Notes)
}

func endpointsText(eps []LBEndpoint) string {
	var out []string
	for _, e := range eps {
		s := e.Addr.String()
		if e.Pod != "" {
			s += " " + e.Pod
		}
		if e.Node != "" {
			s += "@" + e.Node
		}
		s += fmt.Sprintf(" %.0f%%", 100*e.Probability)
		if e.Weight > 0 {
			s += fmt.Sprintf(" w%d", e.Weight)
		}
		out = append(out, s)
	}
	return strings.Join(out, ", ")
}
