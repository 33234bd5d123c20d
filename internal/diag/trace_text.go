package diag

import (
	"fmt"
	"io"
	"strings"
)

// WriteText prints a trace in detail, one section per stage, like
// ovn-trace's detailed form.
func (r *TraceReport) WriteText(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s -> %s %s (%s), lab %s, proxy mode %s\n", r.From.Kind, r.From.Name, r.To.Kind, r.To.Name, r.To.Addr, r.Lab, r.Mode)
	fmt.Fprintf(&b, "  %s %s -> %s\n", r.Proto, r.From.Addr.Addr(), r.To.Addr)
	b.WriteString("\nsource\n")
	traceSteps(&b, r.Source, "  ")
	if r.LB != nil {
		fmt.Fprintf(&b, "\nload balancing on %s: %s %s address of %s", r.LB.Node, r.LB.Verdict, r.LB.AddrKind, r.LB.Service)
		if r.LB.Affinity > 0 {
			fmt.Fprintf(&b, ", ClientIP affinity %ds", r.LB.Affinity)
		}
		b.WriteString("\n")
		for _, l := range r.LB.Rules {
			b.WriteString("  " + l + "\n")
		}
	}
	for _, br := range r.Branches {
		fmt.Fprintf(&b, "\n-> %s", br.Endpoint)
		if br.Pod != "" {
			fmt.Fprintf(&b, " pod %s", br.Pod)
		}
		if br.Node != "" {
			fmt.Fprintf(&b, " on %s", br.Node)
		}
		fmt.Fprintf(&b, ", p=%.3f, masquerade %s, %s", br.Probability, traceYesNo(br.Masquerade), br.Encap)
		if br.Underlay != "" {
			fmt.Fprintf(&b, " (%s)", br.Underlay)
		}
		if !br.Delivered {
			b.WriteString(", NOT DELIVERED")
		}
		b.WriteString("\n")
		traceSteps(&b, br.Path, "  ")
		if len(br.Reply) > 0 {
			b.WriteString("  reply:\n")
			traceSteps(&b, br.Reply, "    ")
		}
	}
	if r.LB != nil && len(r.Branches) == 0 {
		fmt.Fprintf(&b, "\nno endpoint: %s\n", r.LB.Verdict)
	}
	if p := r.Probe; p != nil {
		b.WriteString("\nprobe\n")
		switch {
		case p.Error != "":
			fmt.Fprintf(&b, "  failed: %s\n", p.Error)
		default:
			fmt.Fprintf(&b, "  answered by %s", p.Answered)
			if p.Endpoint.IsValid() {
				fmt.Fprintf(&b, ", conntrack: %s", p.Conntrack)
			}
			if p.Predicted {
				b.WriteString("; as predicted\n")
			} else {
				b.WriteString("; NOT one of the predicted endpoints\n")
			}
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteMinimal prints the stable short form tests and scripts compare:
// one line for the trace, one per endpoint.
//
//	pod default/client-0 -> service default/web:http 10.1.0.20:80 TCP lb=DNAT
//	  10.0.3.5:8080 pod=default/web-2 node=node-3 p=0.333 masq=no encap=vxlan underlay=router delivered=yes
func (r *TraceReport) WriteMinimal(w io.Writer) error {
	var b strings.Builder
	lb := "none"
	if r.LB != nil {
		lb = r.LB.Verdict
	}
	fmt.Fprintf(&b, "%s %s -> %s %s %s %s lb=%s\n", r.From.Kind, r.From.Name, r.To.Kind, r.To.Name, r.To.Addr, r.Proto, lb)
	if len(r.Branches) == 0 {
		b.WriteString("  no endpoint\n")
	}
	for _, br := range r.Branches {
		fmt.Fprintf(&b, "  %s pod=%s node=%s p=%.3f masq=%s encap=%s underlay=%s delivered=%s\n", br.Endpoint,
			traceDash(br.Pod), traceDash(br.Node), br.Probability, traceYesNo(br.Masquerade), br.Encap, traceDash(br.Underlay), traceYesNo(br.Delivered))
	}
	if p := r.Probe; p != nil {
		if p.Error != "" {
			fmt.Fprintf(&b, "  probe error=%q\n", p.Error)
		} else {
			fmt.Fprintf(&b, "  probe answered=%s endpoint=%s predicted=%s\n", p.Answered, traceDash(traceValid(p.Endpoint.IsValid(), p.Endpoint.String())), traceYesNo(p.Predicted))
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func traceSteps(b *strings.Builder, steps []TraceStep, indent string) {
	for _, s := range steps {
		fmt.Fprintf(b, "%s%-22s %s\n", indent, s.At+":", s.What)
	}
}

func traceYesNo(v bool) string {
	if v {
		return "yes"
	}
	return "no"
}

func traceDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func traceValid(ok bool, s string) string {
	if ok {
		return s
	}
	return ""
}
