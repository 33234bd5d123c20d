package verify

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
)

// Checks of the service proxy: traffic to cluster IPs, NodePorts and
// LoadBalancer IPs, with the semantics Kubernetes gives them.

func (e *env) echoPods() []string {
	var out []string
	for _, p := range e.w.echo {
		out = append(out, p.Name)
	}
	return out
}

// clientProbes probe addr from one client pod per node (nodes without
// one are left out), running ask from the pod.
func (e *env) clientProbes(to string, addr netip.AddrPort, ask func(ctx context.Context, src podRef) error) []probe {
	var probes []probe
	for _, n := range e.nodes {
		src, ok := e.w.client(n.Name)
		if !ok {
			continue
		}
		probes = append(probes, probe{from: podName(src), to: to, addr: addr.String(), run: func(ctx context.Context) error {
			return ask(ctx, src)
		}})
	}
	return probes
}

func checkPodToClusterIP(ctx context.Context, e *env) Result {
	addr := e.w.svc[svcEcho].addr("http")
	echoes := e.w.echoNames()
	probes := e.clientProbes("ClusterIP "+Namespace+"/"+svcEcho, addr, func(ctx context.Context, src podRef) error {
		r, err := e.askHTTP(ctx, src.from, addr, 0)
		switch {
		case err != nil:
			return err
		case r.Namespace != Namespace || !echoes[r.Pod]:
			return fmt.Errorf("answered by %s/%s, not an endpoint", r.Namespace, r.Pod)
		case r.Pod != src.Name && clientIP(r) != src.IP:
			// Only a pod reaching itself (hairpin) is masqueraded.
			return fmt.Errorf("endpoint %s saw the source %s, not the pod's %s", r.Pod, r.Client, src.IP)
		}
		return nil
	})
	return runProbes(ctx, probes, "pods answered through the ClusterIP by an endpoint, source kept")
}

func checkNodeToClusterIP(ctx context.Context, e *env) Result {
	addr := e.w.svc[svcEcho].addr("http")
	var probes []probe
	for _, n := range e.nodes {
		probes = append(probes, e.answeredBy(n.Name, n.host, addr, "ClusterIP "+Namespace+"/"+svcEcho, 0, e.echoPods()...))
	}
	return runProbes(ctx, probes, "nodes answered through the ClusterIP")
}

// checkNodeToNodePort: every node asks the NodePort of every node (its
// own included); the pinned pod, the only endpoint, must answer.
func checkNodeToNodePort(ctx context.Context, e *env) Result {
	np := e.w.svc[svcNodePort].Ports["http"].NodePort
	var probes []probe
	for _, from := range e.nodes {
		for _, n := range e.nodes {
			addr := netip.AddrPortFrom(n.IP, uint16(np))
			probes = append(probes, e.answeredBy(from.Name, from.host, addr, "NodePort of "+n.Name, 0, e.w.local.Name))
		}
	}
	return runProbes(ctx, probes, "nodes answered by "+e.w.local.String()+" through every node's NodePort")
}

// nodePortProbes ask the NodePort of the nodes that match from outside;
// the pinned pod, its only endpoint, must answer.
func (e *env) nodePortProbes(match func(n nodeRef) bool) []probe {
	np := e.w.svc[svcNodePort].Ports["http"].NodePort
	var probes []probe
	for _, n := range e.nodes {
		if match(n) {
			addr := netip.AddrPortFrom(n.IP, uint16(np))
			probes = append(probes, e.answeredBy(e.external.Name, e.external.host, addr, "NodePort of "+n.Name, 0, e.w.local.Name))
		}
	}
	return probes
}

func checkNodePortLocal(ctx context.Context, e *env) Result {
	probes := e.nodePortProbes(func(n nodeRef) bool { return n.Name == e.w.local.Node })
	return runProbes(ctx, probes, "answered by "+e.w.local.String()+" on its own node")
}

func checkNodePortRemote(ctx context.Context, e *env) Result {
	probes := e.nodePortProbes(func(n nodeRef) bool { return n.Name != e.w.local.Node })
	if len(probes) == 0 {
		return skip("the lab has one node")
	}
	return runProbes(ctx, probes, "answered by "+e.w.local.String()+" from another node")
}

func (e *env) lbAddr(svc string) netip.AddrPort {
	s := e.w.svc[svc]
	return netip.AddrPortFrom(s.LBIP, uint16(s.Ports["http"].Port))
}

func checkLoadBalancer(ctx context.Context, e *env) Result {
	addr := e.lbAddr(svcLBLocal)
	p := e.answeredBy(e.external.Name, e.external.host, addr, "LoadBalancer "+Namespace+"/"+svcLBLocal, 0, e.w.local.Name)
	return runProbes(ctx, []probe{p}, fmt.Sprintf("the external client %s (in loadBalancerSourceRanges) was answered", e.external.IP))
}

// checkSourceRanges: a source outside a service's loadBalancerSourceRanges
// must be dropped. The lab's router forwards only the (MAC, IP) pairs of
// its hosts, so the external client cannot send from a second address (the
// router would drop it, and its refusal could not be told from the
// proxy's). Instead, lb-closed admits only an address the client does not
// have: the client is the source outside the ranges.
func checkSourceRanges(ctx context.Context, e *env) Result {
	addr := e.lbAddr(svcLBClosed)
	ext := e.external.IP
	closed := ext.Next()
	details := []string{
		fmt.Sprintf("from a second address of the external client: skipped: the lab's router forwards only %s, the client's own address, so a packet from another one would be dropped before any node's proxy saw it",
			ext),
	}
	r, err := e.askHTTP(ctx, e.external.host, addr, 0)
	switch {
	case err == nil:
		return fail(fmt.Sprintf("%s answered %s although loadBalancerSourceRanges admit only %s/32", r.Pod, ext, closed), details...)
	case !isTimeout(err):
		return fail(fmt.Sprintf("%s (%s) was refused with %q; the proxy should drop it silently", addr, svcLBClosed, err), details...)
	}
	details = append(details, fmt.Sprintf("from %s to %s (%s, admits only %s/32): dropped, %s", ext, addr, svcLBClosed, closed, err))
	res := pass(fmt.Sprintf("the external client was dropped by %s, whose ranges do not admit it; sending from a second client address: skipped, the lab's router forwards only the client's own address", svcLBClosed))
	res.Details = details
	return res
}

// affinityRequests is how many new connections each client makes to the
// service with sessionAffinity ClientIP: without affinity, all landing on
// one of N endpoints has probability N^(1-10).
const affinityRequests = 10

func checkAffinity(ctx context.Context, e *env) Result {
	addr := e.w.svc[svcAffinity].addr("http")
	echoes := e.w.echoNames()
	probes := e.clientProbes("ClusterIP "+Namespace+"/"+svcAffinity, addr, func(ctx context.Context, src podRef) error {
		got := map[string]int{}
		answers := src.from.probe(ctx, ProbeRequest{URL: "http://" + addr.String() + "/", Count: affinityRequests, Parallel: 1, Timeout: e.opts.RequestTimeout})
		for _, a := range answers {
			r, err := echoReply(a, true)
			if err != nil {
				return err
			}
			if !echoes[r.Pod] {
				return fmt.Errorf("answered by %s/%s, not an endpoint", r.Namespace, r.Pod)
			}
			got[r.Pod]++
		}
		if len(got) != 1 {
			return fmt.Errorf("%d connections landed on %d pods: %v", affinityRequests, len(got), got)
		}
		return nil
	})
	return runProbes(ctx, probes, fmt.Sprintf("clients whose %d connections all landed on one pod", affinityRequests))
}

func checkETPLocal(ctx context.Context, e *env) Result {
	addr := e.lbAddr(svcLBLocal)
	ext := e.external.IP
	p := probe{from: e.external.Name, to: "LoadBalancer " + Namespace + "/" + svcLBLocal, addr: addr.String(), run: func(ctx context.Context) error {
		r, err := e.askHTTP(ctx, e.external.host, addr, 0)
		switch {
		case err != nil:
			return err
		case clientIP(r) != ext:
			return fmt.Errorf("%s saw the source %s, not the client's %s: masqueraded under externalTrafficPolicy Local", r.Pod, r.Client, ext)
		}
		return nil
	}}
	return runProbes(ctx, []probe{p}, fmt.Sprintf("the endpoint saw the client's own address %s", ext))
}

// healthReply is kube-proxy's health check body.
type healthReply struct {
	Service struct {
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
	} `json:"service"`
	LocalEndpoints int `json:"localEndpoints"`
}

func checkHealthCheck(ctx context.Context, e *env) Result {
	port := e.w.svc[svcLBLocal].HealthCheckNodePort
	if port == 0 {
		return fail(Namespace + "/" + svcLBLocal + " has no healthCheckNodePort")
	}
	var probes []probe
	without := 0
	for _, n := range e.nodes {
		local := n.Name == e.w.local.Node
		wantCode, wantN := http.StatusServiceUnavailable, 0
		if local {
			wantCode, wantN = http.StatusOK, 1
		} else {
			without++
		}
		from := e.outside(n)
		url := fmt.Sprintf("http://%s/healthz", netip.AddrPortFrom(n.IP, uint16(port)))
		probes = append(probes, probe{from: from.Name, to: "health check of " + n.Name, addr: url, run: func(ctx context.Context) error {
			a := from.host.probe(ctx, ProbeRequest{URL: url, Timeout: e.opts.RequestTimeout})[0]
			if err := a.Err(); err != nil {
				return err
			}
			code, body := a.Code, a.Body
			var h healthReply
			if err := json.Unmarshal(body, &h); err != nil {
				return fmt.Errorf("HTTP %d, not kube-proxy's health check JSON: %q", code, strings.TrimSpace(string(body)))
			}
			switch {
			case code != wantCode:
				return fmt.Errorf("HTTP %d (localEndpoints %d), want %d", code, h.LocalEndpoints, wantCode)
			case h.LocalEndpoints != wantN:
				return fmt.Errorf("localEndpoints %d, want %d", h.LocalEndpoints, wantN)
			case h.Service.Namespace != Namespace || h.Service.Name != svcLBLocal:
				return fmt.Errorf("the body names service %s/%s", h.Service.Namespace, h.Service.Name)
			}
			return nil
		}})
	}
	summary := fmt.Sprintf("200 on %s (local endpoint), 503 on the %d others", e.w.local.Node, without)
	if without == 0 {
		summary = fmt.Sprintf("200 on %s; the lab has no node without a local endpoint to answer 503", e.w.local.Node)
	}
	return runProbes(ctx, probes, summary)
}

func checkHairpin(ctx context.Context, e *env) Result {
	// The pinned pod is the only endpoint of the NodePort service.
	self := e.w.local
	addr := e.w.svc[svcNodePort].addr("http")
	p := e.answeredBy(podName(self), self.from, addr, "its own service "+Namespace+"/"+svcNodePort, 0, self.Name)
	return runProbes(ctx, []probe{p}, "the pod reached itself through its service's ClusterIP")
}

func checkUDP(ctx context.Context, e *env) Result {
	addr := e.w.svc[svcEcho].addr("udp")
	echoes := e.w.echoNames()
	probes := e.clientProbes("UDP ClusterIP "+Namespace+"/"+svcEcho, addr, func(ctx context.Context, src podRef) error {
		r, err := e.askUDP(ctx, src.from, addr)
		switch {
		case err != nil:
			return err
		case !echoes[r.Pod]:
			return fmt.Errorf("answered by %s/%s, not an endpoint", r.Namespace, r.Pod)
		}
		return nil
	})
	return runProbes(ctx, probes, "datagrams answered through the ClusterIP")
}
