package diag

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/model"
)

const maxHops = 8

// toFirstNode follows the source's routing to the node whose netfilter
// hooks see the packet first: a pod's node, the node itself, or for the
// external client the node the router hands the address to.
func (tl *traceLab) toFirstNode(from *tracePlace, dst netip.Addr) (*tracePlace, []TraceStep, error) {
	var steps []TraceStep
	ns, err := from.open()
	if err != nil {
		return nil, nil, err
	}
	switch from.Kind {
	case "node":
		steps = append(steps, TraceStep{At: from.Name, What: "sent by the node itself (netfilter output hook)"})
		return from, steps, nil
	case "pod":
		r, err := ns.RouteTo(dst)
		if err != nil {
			steps = append(steps, TraceStep{At: from.String(), What: "no route to " + dst.String() + ": dropped"})
			return nil, steps, nil
		}
		steps = append(steps, TraceStep{At: from.String(), What: "route " + hopRoute(dst, r) + " (to its node)"})
		return tl.byName[from.Node], steps, nil
	}
	// external (or anything outside the nodes): hop through the router.
	at := from
	for range maxHops {
		if owner := tl.byAddr[dst]; owner == at {
			return at, steps, nil
		}
		ns, err := at.open()
		if err != nil {
			return nil, steps, err
		}
		r, err := ns.RouteTo(dst)
		if err != nil || r.Blackhole {
			steps = append(steps, TraceStep{At: at.String(), What: "no route to " + dst.String() + ": dropped"})
			return nil, steps, nil
		}
		next := tl.byAddr[r.Gateway]
		if !r.Gateway.IsValid() {
			next = tl.byAddr[dst]
		}
		steps = append(steps, TraceStep{At: at.String(), What: "route " + hopRoute(dst, r)})
		if next == nil {
			steps = append(steps, TraceStep{At: at.String(), What: "next hop is outside the lab: dropped"})
			return nil, steps, nil
		}
		if next.Kind == "node" {
			return next, steps, nil
		}
		at = next
	}
	return nil, steps, fmt.Errorf("more than %d hops to a node", maxHops)
}

// walk is where forward got.
type walk struct {
	steps     []TraceStep
	encap     string
	underlay  string
	delivered bool
	end       *tracePlace
}

// forward follows a packet to dst from node n through the lab: the node's
// route, encapsulation, the underlay (same subnet or the router), the
// receiving node's decapsulation and route, to the namespace owning dst.
func (tl *traceLab) forward(n *tracePlace, dst netip.Addr) walk {
	var w walk
	step := func(at *tracePlace, format string, args ...any) {
		w.steps = append(w.steps, TraceStep{At: at.String(), What: fmt.Sprintf(format, args...)})
	}
	for range maxHops {
		if tl.byAddr[dst] == n {
			step(n, "%s is this namespace's own address: delivered", dst)
			w.delivered, w.end = true, n
			w.encap = cmp.Or(w.encap, "local")
			return w
		}
		ns, err := n.open()
		if err != nil {
			step(n, "cannot open the namespace: %v", err)
			return w
		}
		r, err := ns.RouteTo(dst)
		if err != nil {
			step(n, "no route to %s: dropped", dst)
			w.encap = cmp.Or(w.encap, "dropped")
			return w
		}
		if r.Blackhole {
			what := "blackhole"
			if n.Block.Contains(dst) {
				what += ": this node's own pod block, and no pod holds " + dst.String()
			}
			step(n, "%s: dropped", what)
			w.encap = cmp.Or(w.encap, "dropped")
			return w
		}
		owner := tl.byAddr[dst]
		if owner != nil && owner.Kind == "pod" && owner.Node == n.Name && !r.Gateway.IsValid() {
			step(n, "route %s: to %s", hopRoute(dst, r), owner)
			step(owner, "delivered to %s", dst)
			w.delivered, w.end = true, owner
			w.encap = cmp.Or(w.encap, "local")
			return w
		}
		// Leaving the node: encapsulated or not. Unencapsulated through
		// the router (a host in another subnet), the router is a hop on the
		// underlay, below.
		encap, outer := "direct", r.Gateway
		if gw := tl.byAddr[outer]; !outer.IsValid() || (gw != nil && gw.Kind == "router") {
			outer = dst
		}
		switch {
		case r.Dev == "tunl0" || strings.HasPrefix(r.Dev, "tun-"):
			encap = "ipip"
			step(n, "route %s: IPIP, outer %s -> %s", hopRoute(dst, r), n.IP, outer)
		case r.Dev == "vxlan.kdive":
			encap = "vxlan"
			vtep, why := vxlanVTEP(ns, r.Gateway)
			if !vtep.IsValid() {
				step(n, "route %s: VXLAN, but %s: dropped", hopRoute(dst, r), why)
				w.encap = "dropped"
				return w
			}
			outer = vtep
			step(n, "route %s: VXLAN (VNI 4096, udp 4789), %s, outer %s -> %s", hopRoute(dst, r), why, n.IP, vtep)
		default:
			step(n, "route %s: direct", hopRoute(dst, r))
		}
		if w.encap == "" || w.encap == "direct" {
			w.encap = encap
		}
		// The underlay, to the namespace owning outer.
		next := tl.byAddr[outer]
		if next == nil {
			step(n, "next hop %s is outside the lab: dropped", outer)
			return w
		}
		if n.Subnet.Contains(outer) {
			w.underlay = cmp.Or(w.underlay, "same subnet")
		} else {
			w.underlay = "router"
			rr, err := ns.RouteTo(outer)
			if err != nil || !rr.Gateway.IsValid() {
				step(n, "no route to %s on the underlay: dropped", outer)
				return w
			}
			router := tl.byAddr[rr.Gateway]
			if router == nil || router.Kind != "router" {
				step(n, "underlay next hop %s is not the lab router: dropped", rr.Gateway)
				return w
			}
			if encap == "direct" && tl.podCIDR.Contains(dst) {
				step(router, "VPC source/destination check drops %s: pod addresses are not VPC addresses (encapsulate across subnets)", dst)
				w.encap = "dropped"
				return w
			}
			step(router, "forwards %s to %s (other subnet)", outer, next)
		}
		if encap != "direct" {
			if next.Kind != "node" {
				step(next, "receives an encapsulated packet it cannot decapsulate: dropped")
				return w
			}
			dev := "the IPIP tunnel"
			if encap == "vxlan" {
				dev = "vxlan.kdive"
			}
			step(next, "decapsulated by %s: inner %s", dev, dst)
		} else if next.Kind != "node" {
			step(next, "delivered to %s", dst)
			w.delivered, w.end = true, next
			return w
		}
		n = next
	}
	step(n, "more than %d hops: giving up", maxHops)
	return w
}

// vxlanVTEP finds the outer destination of a VXLAN route's gateway: its
// neighbour entry gives the MAC, the FDB entry of that MAC the VTEP.
func vxlanVTEP(ns *kernel.NetNS, gw netip.Addr) (netip.Addr, string) {
	nbs, err := ns.Neighbors("vxlan.kdive")
	if err != nil {
		return netip.Addr{}, "no neighbour table: " + err.Error()
	}
	var mac net.HardwareAddr
	for _, nb := range nbs {
		if nb.IP == gw {
			mac = nb.MAC
		}
	}
	if mac == nil {
		return netip.Addr{}, "no neighbour entry for " + gw.String()
	}
	fdb, err := ns.FDB("vxlan.kdive")
	if err != nil {
		return netip.Addr{}, "no FDB: " + err.Error()
	}
	for _, e := range fdb {
		if e.MAC.String() == mac.String() && e.Dst.IsValid() {
			return e.Dst, fmt.Sprintf("neighbour %s is %s, FDB: %s at VTEP %s", gw, mac, mac, e.Dst)
		}
	}
	return netip.Addr{}, fmt.Sprintf("no FDB entry for %s (neighbour %s)", mac, gw)
}

func hopRoute(dst netip.Addr, r kernel.Route) string {
	s := dst.String()
	if r.Gateway.IsValid() {
		s += " via " + r.Gateway.String()
	}
	if r.Dev != "" {
		s += " dev " + r.Dev
	}
	return s
}

// reply follows the answer from the endpoint back to the client: to the
// client itself, or to the masquerading node, where conntrack reverses
// the NAT.
func (tl *traceLab) reply(end, from, entry *tracePlace, masq bool, vip, ep netip.AddrPort) []TraceStep {
	var steps []TraceStep
	to := from.IP
	if masq {
		to = entry.IP
	}
	start := end
	if end.Kind == "pod" {
		if ns, err := end.open(); err == nil {
			if r, err := ns.RouteTo(to); err == nil {
				steps = append(steps, TraceStep{At: end.String(), What: "reply " + ep.String() + " -> " + to.String() + ": route " + hopRoute(to, r)})
			}
		}
		start = tl.byName[end.Node]
	}
	w := tl.forward(start, to)
	if vip != ep {
		// On the way through the node that load-balanced the request,
		// before its routing: conntrack restores the service address.
		at := len(w.steps)
		for i, s := range w.steps {
			if s.At == entry.Name {
				at = i
				break
			}
		}
		undo := TraceStep{At: entry.Name, What: fmt.Sprintf("conntrack reverses the DNAT: source %s -> %s", ep, vip)}
		w.steps = append(w.steps[:at], append([]TraceStep{undo}, w.steps[at:]...)...)
	}
	steps = append(steps, w.steps...)
	if !w.delivered {
		return steps
	}
	if masq && from != entry {
		steps = append(steps, TraceStep{At: entry.Name, What: fmt.Sprintf("conntrack reverses the masquerade: destination %s -> %s", entry.IP, from.IP)})
		w2 := tl.forward(entry, from.IP)
		steps = append(steps, w2.steps...)
	}
	return steps
}

func sortBranches(bs []TraceBranch) {
	slices.SortFunc(bs, func(a, b TraceBranch) int { return a.Endpoint.Compare(b.Endpoint) })
}

// probe sends one real request from the source and reads which endpoint
// answered (the echo servers say) and what conntrack recorded on the node
// that load-balanced it.
func (tl *traceLab) probe(ctx context.Context, from, entry *tracePlace, dst TraceEnd, proto model.Protocol, branches []TraceBranch) *TraceProbe {
	pr := &TraceProbe{}
	ns, err := from.open()
	if err != nil {
		pr.Error = err.Error()
		return pr
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	var local netip.AddrPort
	var body []byte
	switch proto {
	case model.ProtocolUDP:
		body, local, err = probeUDP(ctx, ns, dst.Addr)
	default:
		body, local, err = probeTCP(ctx, ns, dst.Addr)
	}
	pr.Sent = true
	if err != nil {
		pr.Error = err.Error()
		return pr
	}
	var ans struct {
		Pod       string `json:"pod"`
		Namespace string `json:"namespace"`
		PodIP     string `json:"podIP"`
	}
	if err := json.Unmarshal(body, &ans); err != nil {
		pr.Error = fmt.Sprintf("answer is not the echo server's JSON: %v", err)
		return pr
	}
	pr.Answered = ans.Namespace + "/" + ans.Pod
	if entry != nil {
		if ens, err := entry.open(); err == nil {
			ipProto := uint8(unix.IPPROTO_TCP)
			if proto == model.ProtocolUDP {
				ipProto = unix.IPPROTO_UDP
			}
			cts, _ := ens.ListConntrack(kernel.ConntrackFilter{Protocol: ipProto, OrigDst: dst.Addr.Addr(), OrigDstPort: dst.Addr.Port()})
			for _, c := range cts {
				if c.OrigSrc.Port() == local.Port() {
					pr.Endpoint, pr.Conntrack = c.ReplySrc, entry.Name+": "+c.String()
				}
			}
		}
	}
	observed := pr.Endpoint.Addr()
	if !observed.IsValid() {
		observed, _ = netip.ParseAddr(ans.PodIP)
	}
	for _, b := range branches {
		if b.Endpoint.Addr() == observed {
			pr.Predicted = true
		}
	}
	return pr
}

func probeTCP(ctx context.Context, ns *kernel.NetNS, dst netip.AddrPort) ([]byte, netip.AddrPort, error) {
	var local netip.AddrPort
	tr := &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := ns.DialContext(ctx, network, addr)
		if err == nil {
			local = c.LocalAddr().(*net.TCPAddr).AddrPort()
		}
		return c, err
	}}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+dst.String()+"/", nil)
	if err != nil {
		return nil, local, err
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return nil, local, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	return b, local, err
}

func probeUDP(ctx context.Context, ns *kernel.NetNS, dst netip.AddrPort) ([]byte, netip.AddrPort, error) {
	c, err := ns.DialContext(ctx, "udp", dst.String())
	if err != nil {
		return nil, netip.AddrPort{}, err
	}
	defer c.Close()
	local := c.LocalAddr().(*net.UDPAddr).AddrPort()
	deadline, _ := ctx.Deadline()
	_ = c.SetDeadline(deadline)
	if _, err := c.Write([]byte("kdive trace probe")); err != nil {
		return nil, local, err
	}
	buf := make([]byte, 1<<16)
	n, err := c.Read(buf)
	if err != nil {
		return nil, local, err
	}
	return buf[:n], local, nil
}
