package verify

import (
	"context"
	"fmt"
	"net/netip"
)

// Checks of the pod network: pods and nodes reaching pods directly.

func podName(p podRef) string { return fmt.Sprintf("%s (%s)", p, p.Node) }

// podProbe asks pod dst from pod src: dst must answer, and must see src's
// own address (no NAT between pods).
func (e *env) podProbe(src, dst podRef, bodySize int) probe {
	addr := netip.AddrPortFrom(dst.IP, echoPort)
	return probe{from: podName(src), to: podName(dst), addr: addr.String(), run: func(ctx context.Context) error {
		r, err := e.askHTTP(ctx, src.from, addr, bodySize)
		switch {
		case err != nil:
			return err
		case r.Pod != dst.Name:
			return fmt.Errorf("answered by %s/%s, not %s", r.Namespace, r.Pod, dst.Name)
		case clientIP(r) != src.IP:
			return fmt.Errorf("the pod saw the source %s, not %s: pod traffic is NATed", r.Client, src.IP)
		}
		return nil
	}}
}

func checkPodToPodSameNode(ctx context.Context, e *env) Result {
	var probes []probe
	for _, n := range e.nodes {
		pods := e.w.onNode[n.Name]
		if len(pods) < 2 {
			continue
		}
		// Each pod asks the next one on its node: every pod is a target.
		for i, src := range pods {
			probes = append(probes, e.podProbe(src, pods[(i+1)%len(pods)], 0))
		}
	}
	if len(probes) == 0 {
		return skip("no node runs two pods of the workload")
	}
	return runProbes(ctx, probes, "pods answered pods on their own node, source kept")
}

func checkPodToPodSameSubnet(ctx context.Context, e *env) Result {
	probes := e.nodePairProbes(func(a, b nodeRef) bool { return a.Subnet == b.Subnet })
	if len(probes) == 0 {
		return skip("no two nodes share a subnet")
	}
	return runProbes(ctx, probes, "pods answered pods on other nodes of their subnet, source kept")
}

func checkPodToPodCrossSubnet(ctx context.Context, e *env) Result {
	probes := e.nodePairProbes(func(a, b nodeRef) bool { return a.Subnet != b.Subnet })
	if len(probes) == 0 {
		return skip("all nodes are in one subnet")
	}
	return runProbes(ctx, probes, "pods answered pods in other subnets, source kept")
}

func checkPodToPodOtherNode(ctx context.Context, e *env) Result {
	probes := e.nodePairProbes(func(a, b nodeRef) bool { return true })
	if len(probes) == 0 {
		return skip("the cluster has one node")
	}
	return runProbes(ctx, probes, "pods answered pods on the other nodes, source kept")
}

// nodePairProbes: for each ordered pair of distinct nodes that match, the
// first node's client pod asks every workload pod of the second.
func (e *env) nodePairProbes(match func(a, b nodeRef) bool) []probe {
	var probes []probe
	for _, a := range e.nodes {
		src, ok := e.w.client(a.Name)
		if !ok {
			continue
		}
		for _, b := range e.nodes {
			if a.Name == b.Name || !match(a, b) {
				continue
			}
			for _, dst := range e.w.onNode[b.Name] {
				probes = append(probes, e.podProbe(src, dst, 0))
			}
		}
	}
	return probes
}

func checkNodeToPod(ctx context.Context, e *env) Result {
	var probes []probe
	for _, n := range e.nodes {
		for _, m := range e.nodes {
			for _, dst := range e.w.onNode[m.Name] {
				probes = append(probes, e.answeredBy(n.Name, n.host, netip.AddrPortFrom(dst.IP, echoPort), podName(dst), 0, dst.Name))
			}
		}
	}
	return runProbes(ctx, probes, "nodes answered by every pod")
}

// answeredBy asks addr from a source; one of the pods named must answer.
func (e *env) answeredBy(from string, o origin, addr netip.AddrPort, to string, bodySize int, pods ...string) probe {
	return probe{from: from, to: to, addr: addr.String(), run: func(ctx context.Context) error {
		r, err := e.askHTTP(ctx, o, addr, bodySize)
		if err != nil {
			return err
		}
		for _, p := range pods {
			if r.Namespace == Namespace && r.Pod == p {
				return nil
			}
		}
		return fmt.Errorf("answered by %s/%s, not by %v", r.Namespace, r.Pod, pods)
	}}
}

// largeBody is bigger than any pod MTU many times over: its segments fill
// the path MTU, so a lower MTU somewhere on the path (a tunnel's overhead
// not taken off the pod MTU, an uplink smaller than its peers) loses them
// while small requests still pass.
const largeBody = 64 << 10

func checkLargeRequest(ctx context.Context, e *env) Result {
	var probes []probe
	for _, a := range e.nodes {
		src, ok := e.w.client(a.Name)
		if !ok {
			continue
		}
		for _, b := range e.nodes {
			if a.Name == b.Name && len(e.nodes) > 1 {
				continue
			}
			for _, dst := range e.w.onNode[b.Name] {
				if dst.Name != src.Name {
					probes = append(probes, e.podProbe(src, dst, largeBody))
					break
				}
			}
		}
	}
	// From outside every node (the external client, or another node):
	// through its NodePort to the pinned pod, so across subnets the
	// request is DNATed and then encapsulated.
	np := e.w.svc[svcNodePort].Ports["http"].NodePort
	for _, n := range e.nodes {
		from := e.outside(n)
		addr := netip.AddrPortFrom(n.IP, uint16(np))
		probes = append(probes, e.answeredBy(from.Name, from.host, addr, "NodePort of "+n.Name, largeBody, e.w.local.Name))
	}
	return runProbes(ctx, probes, fmt.Sprintf("%d KiB request bodies arrived", largeBody>>10))
}

// outside is a client that is not node n: the lab's external client, or
// on a cluster the next node (n itself when it is the only one).
func (e *env) outside(n nodeRef) nodeRef {
	if e.external != nil {
		return *e.external
	}
	for i, m := range e.nodes {
		if m.Name == n.Name {
			return e.nodes[(i+1)%len(e.nodes)]
		}
	}
	return e.nodes[0]
}
