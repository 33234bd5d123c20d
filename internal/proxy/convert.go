package proxy

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/kdive/kdive/internal/model"
)

// LabelServiceProxyName marks services another proxy handles; kdive skips
// them, as kube-proxy does.
const LabelServiceProxyName = "service.kubernetes.io/service-proxy-name"

// ignored says whether kube-proxy leaves an object alone by its labels (its
// informers select !service-proxy-name,!headless, for Services and
// EndpointSlices alike): another proxy's, or marked headless (an
// EndpointSlice so labelled no longer serves its Service's cluster IP).
func ignored(labels map[string]string) bool {
	_, other := labels[LabelServiceProxyName]
	_, headless := labels[corev1.IsHeadlessService]
	return other || headless
}

// AnnotationIPVSScheduler chooses a service's IPVS scheduler in ipvs mode.
const AnnotationIPVSScheduler = "kdive.dev/ipvs-scheduler"

// defaultAffinityTimeout is ClientIP affinity's timeout when the service
// sets none (the API server's default, 3 hours).
const defaultAffinityTimeout = 10800

// checkNames refuses a service whose namespace, name or port names
// Kubernetes would refuse. They become rule comments, chain-name hashes,
// set element comments and IPVS names; the API server validates them, and
// this is the second line of defence: a name holding a quote, a space or
// a newline never reaches iptables-restore's or nft's input.
func checkNames(svc *corev1.Service) error {
	quoted := fmt.Sprintf("%q", svc.Namespace+"/"+svc.Name)
	if msgs := validation.IsDNS1123Label(svc.Namespace); len(msgs) > 0 {
		return fmt.Errorf("service %s: metadata.namespace: %s", quoted, strings.Join(msgs, "; "))
	}
	if msgs := validation.IsDNS1035Label(svc.Name); len(msgs) > 0 {
		return fmt.Errorf("service %s: metadata.name: %s", quoted, strings.Join(msgs, "; "))
	}
	for i, sp := range svc.Spec.Ports {
		if sp.Name == "" {
			continue
		}
		if msgs := validation.IsDNS1123Label(sp.Name); len(msgs) > 0 {
			return fmt.Errorf("service %s/%s: spec.ports[%d].name: %q: %s", svc.Namespace, svc.Name, i, sp.Name, strings.Join(msgs, "; "))
		}
	}
	return nil
}

// ServicePorts turns a Service and its EndpointSlices into service ports.
// Services the proxy does not handle (headless, ExternalName, another
// proxy's) give none and no error. A service with an invalid field gives
// an error naming the service and the field, and no ports: a bad object
// never takes the rest down.
func ServicePorts(svc *corev1.Service, slices []*discoveryv1.EndpointSlice) ([]model.ServicePort, error) {
	name := svc.Namespace + "/" + svc.Name
	if svc.Spec.Type == corev1.ServiceTypeExternalName || ignored(svc.Labels) {
		return nil, nil
	}
	if err := checkNames(svc); err != nil {
		return nil, err
	}
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP}
	}
	if len(ips) == 0 || ips[0] == corev1.ClusterIPNone {
		return nil, nil // headless: nothing to proxy
	}
	var clusterIPs []netip.Addr
	for i, s := range ips {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("service %s: spec.clusterIPs[%d]: %q is not an IP address", name, i, s)
		}
		if a.Is4() {
			clusterIPs = append(clusterIPs, a)
		}
	}
	if len(clusterIPs) == 0 {
		return nil, nil // IPv6 only: not handled yet
	}
	externalIPs, err := parseAddrs(svc.Spec.ExternalIPs, name, "spec.externalIPs")
	if err != nil {
		return nil, err
	}
	var lbIPs []netip.Addr
	for i, ing := range svc.Status.LoadBalancer.Ingress {
		if ing.IP == "" {
			continue
		}
		a, err := netip.ParseAddr(ing.IP)
		if err != nil {
			return nil, fmt.Errorf("service %s: status.loadBalancer.ingress[%d].ip: %q is not an IP address", name, i, ing.IP)
		}
		if a.Is4() {
			lbIPs = append(lbIPs, a)
		}
	}
	var ranges []netip.Prefix
	for i, r := range svc.Spec.LoadBalancerSourceRanges {
		p, err := netip.ParsePrefix(r)
		if err != nil {
			return nil, fmt.Errorf("service %s: spec.loadBalancerSourceRanges[%d]: %q is not a CIDR", name, i, r)
		}
		if p.Addr().Is4() {
			ranges = append(ranges, p.Masked())
		}
	}
	ranges = outermost(ranges)
	affinity := 0
	if svc.Spec.SessionAffinity == corev1.ServiceAffinityClientIP {
		affinity = defaultAffinityTimeout
		if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
			affinity = int(*c.ClientIP.TimeoutSeconds)
		}
		if affinity < 1 || affinity > 86400 {
			return nil, fmt.Errorf("service %s: spec.sessionAffinityConfig.clientIP.timeoutSeconds: %d is outside 1-86400", name, affinity)
		}
	}
	if hc := svc.Spec.HealthCheckNodePort; hc < 0 || hc > 65535 {
		return nil, fmt.Errorf("service %s: spec.healthCheckNodePort: %d is outside 0-65535", name, hc)
	}
	external := svc.Spec.Type == corev1.ServiceTypeNodePort || svc.Spec.Type == corev1.ServiceTypeLoadBalancer || len(externalIPs) > 0
	seen := map[string]bool{}
	var out []model.ServicePort
	for i, sp := range svc.Spec.Ports {
		fp := fmt.Sprintf("spec.ports[%d]", i)
		proto := model.Protocol(sp.Protocol)
		if proto == "" {
			proto = model.ProtocolTCP
		}
		switch {
		case proto != model.ProtocolTCP && proto != model.ProtocolUDP && proto != model.ProtocolSCTP:
			return nil, fmt.Errorf("service %s: %s.protocol: unsupported protocol %q", name, fp, sp.Protocol)
		case sp.Port < 1 || sp.Port > 65535:
			return nil, fmt.Errorf("service %s: %s.port: %d is outside 1-65535", name, fp, sp.Port)
		case sp.NodePort < 0 || sp.NodePort > 65535:
			return nil, fmt.Errorf("service %s: %s.nodePort: %d is outside 0-65535", name, fp, sp.NodePort)
		}
		key := sp.Name + "/" + string(proto)
		if seen[key] {
			return nil, fmt.Errorf("service %s: %s.name: duplicate port %q for %s", name, fp, sp.Name, proto)
		}
		seen[key] = true
		p := model.ServicePort{
			Name:       model.ServicePortName{Namespace: svc.Namespace, Name: svc.Name, Port: sp.Name, Protocol: proto},
			ClusterIPs: clusterIPs, Port: int(sp.Port), ExternalIPs: externalIPs,
			AffinityTimeout:     affinity,
			InternalPolicyLocal: svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == corev1.ServiceInternalTrafficPolicyLocal,
			PreferClose:         svc.Spec.TrafficDistribution != nil && *svc.Spec.TrafficDistribution == corev1.ServiceTrafficDistributionPreferClose,
			IPVSScheduler:       svc.Annotations[AnnotationIPVSScheduler],
		}
		if svc.Spec.Type == corev1.ServiceTypeNodePort || svc.Spec.Type == corev1.ServiceTypeLoadBalancer {
			p.NodePort = int(sp.NodePort)
		}
		if svc.Spec.Type == corev1.ServiceTypeLoadBalancer {
			p.LoadBalancerIPs, p.LoadBalancerSourceRanges = lbIPs, ranges
		}
		if external && svc.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal {
			p.ExternalPolicyLocal = true
			p.HealthCheckNodePort = int(svc.Spec.HealthCheckNodePort)
		}
		p.Endpoints = endpointsFor(svc.Name, sp.Name, sp.Protocol, slices)
		out = append(out, p)
	}
	return out, nil
}

// outermost keeps the ranges not inside another one, once each, sorted:
// the same union, in the form a backend whose sets merge overlapping
// intervals (nftables) reads back as it was given.
func outermost(in []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range in {
		inside := slices.ContainsFunc(in, func(q netip.Prefix) bool { return q.Bits() < p.Bits() && q.Contains(p.Addr()) })
		if !inside && !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	return out
}

func parseAddrs(ss []string, svc, field string) ([]netip.Addr, error) {
	var out []netip.Addr
	for i, s := range ss {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("service %s: %s[%d]: %q is not an IP address", svc, field, i, s)
		}
		if a.Is4() {
			out = append(out, a)
		}
	}
	return out, nil
}

// endpointsFor merges the IPv4 endpoints of every slice of the service for
// one port (slices name their ports after the service's), one per address
// and port; when slices disagree about an endpoint (during a move between
// slices) the readiest wins.
func endpointsFor(svc, portName string, proto corev1.Protocol, slices []*discoveryv1.EndpointSlice) []model.Endpoint {
	if proto == "" {
		proto = corev1.ProtocolTCP
	}
	byAddr := map[netip.AddrPort]model.Endpoint{}
	for _, sl := range slices {
		if sl.AddressType != discoveryv1.AddressTypeIPv4 || sl.Labels[discoveryv1.LabelServiceName] != svc || ignored(sl.Labels) {
			continue
		}
		port := -1
		for _, p := range sl.Ports {
			pp := corev1.ProtocolTCP
			if p.Protocol != nil {
				pp = *p.Protocol
			}
			if p.Port != nil && deref(p.Name) == portName && pp == proto {
				port = int(*p.Port)
			}
		}
		if port < 1 || port > 65535 {
			continue
		}
		for _, e := range sl.Endpoints {
			if len(e.Addresses) == 0 {
				continue
			}
			a, err := netip.ParseAddr(e.Addresses[0])
			if err != nil || !a.Is4() {
				continue
			}
			ready := e.Conditions.Ready == nil || *e.Conditions.Ready
			serving := ready
			if e.Conditions.Serving != nil {
				serving = *e.Conditions.Serving
			}
			ep := model.Endpoint{
				IP: a, Port: port, NodeName: deref(e.NodeName), Zone: deref(e.Zone),
				Ready: ready, Serving: serving, Terminating: e.Conditions.Terminating != nil && *e.Conditions.Terminating,
			}
			// Ready is taken as the EndpointSlice says, as kube-proxy takes
			// it: the controller clears it for a terminating pod, except
			// for a Service with publishNotReadyAddresses, whose
			// terminating pods stay in use (upstream's e2e "Services should
			// create endpoints for unready pods").
			if e.Hints != nil {
				for _, z := range e.Hints.ForZones {
					ep.ZoneHints = append(ep.ZoneHints, z.Name)
				}
				for _, n := range e.Hints.ForNodes {
					ep.NodeHints = append(ep.NodeHints, n.Name)
				}
			}
			if r := e.TargetRef; r != nil && r.Kind == "Pod" {
				ep.Pod = r.Namespace + "/" + r.Name
			}
			key := ep.AddrPort()
			if old, ok := byAddr[key]; ok && rank(old) >= rank(ep) {
				continue
			}
			byAddr[key] = ep
		}
	}
	out := make([]model.Endpoint, 0, len(byAddr))
	for _, ep := range byAddr {
		out = append(out, ep)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].AddrPort().Compare(out[j].AddrPort()) < 0 })
	return out
}

func rank(e model.Endpoint) int {
	switch {
	case e.Ready:
		return 2
	case e.Serving:
		return 1
	}
	return 0
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
