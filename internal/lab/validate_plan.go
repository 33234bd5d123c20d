package lab

import (
	"fmt"
	"net/netip"

	"k8s.io/apimachinery/pkg/util/validation/field"
)

// Checks of a lab file that need every range decided: planSpec has
// already refused overlaps between the lab's own ranges (pod, service and
// load balancer CIDRs, subnets, the external CIDR), a node in an unknown
// subnet, duplicate names and addresses. What is left are overlaps with
// ranges that are not the lab's to give out, and node labels that would
// contradict the ones the kubelet sets. (YAML cycles, `&a [*a]`, and alias
// bombs are refused by the YAML decoder before any of this.)

// specialRanges are IPv4 ranges no lab range may overlap: packets to them
// never reach the lab's routes (loopback, multicast, reserved), or the lab
// uses them itself (169.254.1.1 is the routed pods' gateway).
var specialRanges = []struct {
	prefix netip.Prefix
	what   string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), "the \"this network\" range"},
	{netip.MustParsePrefix("127.0.0.0/8"), "the loopback range"},
	{netip.MustParsePrefix("169.254.0.0/16"), "the link-local range (routed pods' gateway 169.254.1.1)"},
	{netip.MustParsePrefix("224.0.0.0/4"), "the multicast range"},
	{netip.MustParsePrefix("240.0.0.0/4"), "the reserved range (and broadcast)"},
}

// kubeletLabels are the node labels the kubelet sets (NodeLabels).
func kubeletLabels(node string) map[string]string {
	return map[string]string{"kubernetes.io/hostname": node, "kubernetes.io/os": "linux"}
}

// validatePlan checks the decided ranges and nodes of p.
func (p *Plan) validatePlan() field.ErrorList {
	spec := field.NewPath("spec")
	var errs field.ErrorList
	check := func(fp *field.Path, c netip.Prefix) {
		for _, r := range specialRanges {
			if c.Overlaps(r.prefix) {
				errs = append(errs, field.Invalid(fp, c.String(), fmt.Sprintf("overlaps %s %s", r.what, r.prefix)))
			}
		}
	}
	check(spec.Child("podCIDR"), p.PodCIDR)
	check(spec.Child("serviceCIDR"), p.ServiceCIDR)
	check(spec.Child("loadBalancerCIDR"), p.LoadBalancerCIDR)
	for i, s := range p.Subnets {
		check(spec.Child("subnets").Index(i).Child("cidr"), s.CIDR)
	}
	check(spec.Child("external", "cidr"), p.External.CIDR)
	for i, n := range p.Nodes {
		for k, want := range kubeletLabels(n.Name) {
			if v, ok := n.Labels[k]; ok && v != want {
				errs = append(errs, field.Invalid(spec.Child("nodes").Index(i).Child("labels").Key(k), v,
					fmt.Sprintf("the kubelet sets it to %q", want)))
			}
		}
	}
	return errs
}
