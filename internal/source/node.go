package source

import (
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"

	"github.com/kdive/kdive/internal/model"
)

// Node translates a Node object: its name, zone label, first IPv4
// InternalIP and spec.podCIDR. A non-empty problem says why the pod network
// cannot use it (yet); the name, zone and IP are filled in whatever it is,
// which is all the service proxy needs.
func Node(n *corev1.Node) (_ model.Node, problem string) {
	mn := model.Node{Name: n.Name, Zone: n.Labels[corev1.LabelTopologyZone]}
	for _, ad := range n.Status.Addresses {
		if ad.Type == corev1.NodeInternalIP {
			if ip, err := netip.ParseAddr(ad.Address); err == nil && ip.Is4() {
				mn.IPs = []netip.Addr{ip}
				break
			}
		}
	}
	if !mn.IP().IsValid() {
		return mn, "no IPv4 InternalIP in status.addresses"
	}
	if n.Spec.PodCIDR == "" {
		return mn, "no spec.podCIDR yet"
	}
	p, err := netip.ParsePrefix(n.Spec.PodCIDR)
	if err != nil || !p.Addr().Is4() || p.Masked() != p {
		return mn, fmt.Sprintf("spec.podCIDR %q is not an IPv4 CIDR", n.Spec.PodCIDR)
	}
	mn.PodCIDR = p
	return mn, ""
}
