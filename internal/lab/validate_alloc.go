package lab

import (
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// What the API server's allocators refuse when a Service asks for a given
// cluster IP or node port: one outside the service CIDR or the node port
// range, or one another service holds. Messages are the allocators'
// (registry/core/service/ipallocator and portallocator), naming the holder.

// validateAllocations checks the cluster IPs, node ports and health check
// node ports the valid services ask for, in order, against existing
// services and each other.
func (o *Objects) validateAllocations(p *Plan, existing []corev1.Service, invalid map[string]bool, fp *field.Path) field.ErrorList {
	replaced := map[string]bool{}
	for i := range o.Services {
		replaced[ServiceName(&o.Services[i])] = true
	}
	ips := map[netip.Addr]string{}
	ports := map[int32]string{}
	for i := range existing {
		s := &existing[i]
		if replaced[ServiceName(s)] {
			continue // an update keeps what it had
		}
		for _, ip := range append([]string{s.Spec.ClusterIP}, s.Spec.ClusterIPs...) {
			if a, err := netip.ParseAddr(ip); err == nil {
				ips[a] = ServiceName(s)
			}
		}
		for _, pt := range s.Spec.Ports {
			if pt.NodePort != 0 {
				ports[pt.NodePort] = ServiceName(s)
			}
		}
		if s.Spec.HealthCheckNodePort != 0 {
			ports[s.Spec.HealthCheckNodePort] = ServiceName(s)
		}
	}
	var errs field.ErrorList
	for i := range o.Services {
		s := &o.Services[i]
		if invalid[ServiceName(s)] {
			continue
		}
		spec := fp.Key("Service " + ServiceName(s)).Child("spec")
		errs = append(errs, allocateIPs(s, p.ServiceCIDR, ips, spec)...)
		for j, pt := range s.Spec.Ports {
			if pt.NodePort != 0 {
				errs = append(errs, allocatePort(pt.NodePort, ServiceName(s), ports, spec.Child("ports").Index(j).Child("nodePort"), "")...)
			}
		}
		if hc := s.Spec.HealthCheckNodePort; hc != 0 {
			errs = append(errs, allocatePort(hc, ServiceName(s), ports, spec.Child("healthCheckNodePort"),
				fmt.Sprintf("failed to allocate requested HealthCheck NodePort %d: ", hc))...)
		}
	}
	return errs
}

func allocateIPs(s *corev1.Service, cidr netip.Prefix, used map[netip.Addr]string, spec *field.Path) field.ErrorList {
	want := s.Spec.ClusterIPs
	if len(want) == 0 && s.Spec.ClusterIP != "" {
		want = []string{s.Spec.ClusterIP}
	}
	var errs field.ErrorList
	for _, ip := range want {
		a, err := netip.ParseAddr(ip)
		if err != nil {
			continue // None, or reported by validateClusterIPs
		}
		switch holder, taken := used[a]; {
		case !cidr.Contains(a) || a == cidr.Addr() || a == lastAddr(cidr):
			errs = append(errs, field.Invalid(spec.Child("clusterIPs"), want, fmt.Sprintf(
				"failed to allocate IP %s: the provided IP (%s) is not in the valid range. The range of valid IPs is %s", ip, ip, cidr)))
		case taken && holder != ServiceName(s):
			errs = append(errs, field.Invalid(spec.Child("clusterIPs"), want, fmt.Sprintf(
				"failed to allocate IP %s: provided IP is already allocated (to Service %s)", ip, holder)))
		default:
			used[a] = ServiceName(s)
		}
	}
	return errs
}

// allocatePort claims a node port for svc; ports of one service may share
// one (a TCP and a UDP port), services may not.
func allocatePort(port int32, svc string, used map[int32]string, fp *field.Path, prefix string) field.ErrorList {
	if port < nodePortMin || port > nodePortMax {
		return field.ErrorList{field.Invalid(fp, port, fmt.Sprintf(
			"%sprovided port is not in the valid range. The range of valid ports is %d-%d", prefix, nodePortMin, nodePortMax))}
	}
	if holder, taken := used[port]; taken && holder != svc {
		return field.ErrorList{field.Invalid(fp, port, fmt.Sprintf("%sprovided port is already allocated (to Service %s)", prefix, holder))}
	}
	used[port] = svc
	return nil
}
