package source_test

import (
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/source"
)

func TestNode(t *testing.T) {
	node := func(cidr string, addrs ...corev1.NodeAddress) *corev1.Node {
		return &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: "n1", Labels: map[string]string{corev1.LabelTopologyZone: "zone-a"}},
			Spec:       corev1.NodeSpec{PodCIDR: cidr},
			Status:     corev1.NodeStatus{Addresses: addrs},
		}
	}
	v6 := corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "fd00::10"}
	ext := corev1.NodeAddress{Type: corev1.NodeExternalIP, Address: "203.0.113.10"}
	v4 := corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "192.0.2.10"}
	ip := netip.MustParseAddr("192.0.2.10")
	for _, c := range []struct {
		what    string
		n       *corev1.Node
		want    model.Node
		problem string
	}{
		{"complete", node("10.244.1.0/24", v6, ext, v4),
			model.Node{Name: "n1", Zone: "zone-a", IPs: []netip.Addr{ip}, PodCIDR: netip.MustParsePrefix("10.244.1.0/24")}, ""},
		{"no IPv4 InternalIP", node("10.244.1.0/24", v6, ext),
			model.Node{Name: "n1", Zone: "zone-a"}, "no IPv4 InternalIP in status.addresses"},
		{"no pod CIDR yet", node("", v4),
			model.Node{Name: "n1", Zone: "zone-a", IPs: []netip.Addr{ip}}, "no spec.podCIDR yet"},
		{"pod CIDR with host bits", node("10.244.1.1/24", v4),
			model.Node{Name: "n1", Zone: "zone-a", IPs: []netip.Addr{ip}}, `spec.podCIDR "10.244.1.1/24" is not an IPv4 CIDR`},
		{"IPv6 pod CIDR", node("fd00:1::/64", v4),
			model.Node{Name: "n1", Zone: "zone-a", IPs: []netip.Addr{ip}}, `spec.podCIDR "fd00:1::/64" is not an IPv4 CIDR`},
	} {
		got, problem := source.Node(c.n)
		if !got.Equal(c.want) || problem != c.problem {
			t.Errorf("%s: %+v, %q; want %+v, %q", c.what, got, problem, c.want, c.problem)
		}
	}
}
