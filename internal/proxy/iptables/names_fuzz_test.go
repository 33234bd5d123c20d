package iptables

import (
	"net/netip"
	"regexp"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy"
)

// FuzzServiceNames: whatever namespace, name and port name a Service
// arrives with (the API server validates them; this is what stands behind
// it), the proxy either refuses it naming the field, or every rule it
// renders prints as one line of restore input whose comment reads back as
// written, and the names it accepted are Kubernetes' (lowercase letters,
// digits and '-').
func FuzzServiceNames(f *testing.F) {
	for _, s := range [][3]string{
		{"default", "web", "http"}, {"kube-system", "kube-dns", "dns-tcp"}, {"default", `a" -j ACCEPT`, "p"},
		{"ns", "svc\nCOMMIT", ""}, {"Default", "web", "http"}, {"ns", "web", `h\"`}, {"ns", "1web", "p"},
		{strings.Repeat("n", 63), strings.Repeat("s", 63), strings.Repeat("p", 15)},
	} {
		f.Add(s[0], s[1], s[2])
	}
	kubeName := regexp.MustCompile(`^[a-z0-9-]*$`)
	node := model.Node{Name: "node-1", IPs: []netip.Addr{netip.MustParseAddr("192.168.0.2")}}
	cfg := proxy.Config{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}
	f.Fuzz(func(t *testing.T, ns, name, port string) {
		svc := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Spec: corev1.ServiceSpec{
				Type: corev1.ServiceTypeNodePort, ClusterIP: "172.30.0.50", ClusterIPs: []string{"172.30.0.50"},
				Ports: []corev1.ServicePort{{Name: port, Protocol: corev1.ProtocolTCP, Port: 80, NodePort: 30080}},
			},
		}
		ports, err := proxy.ServicePorts(svc, nil)
		if err != nil {
			if !strings.Contains(err.Error(), "metadata.") && !strings.Contains(err.Error(), "spec.ports[0].name") {
				t.Fatalf("%q/%q port %q refused without naming the field: %v", ns, name, port, err)
			}
			return
		}
		for _, s := range []string{ns, name, port} {
			if !kubeName.MatchString(s) {
				t.Fatalf("accepted %q/%q port %q: %q is no Kubernetes name", ns, name, port, s)
			}
		}
		d := proxy.NewDesired(cfg, node)
		for _, sp := range ports {
			d.Services = append(d.Services, proxy.Resolve(sp, node))
		}
		rs := Render(d)
		for _, c := range append(rs.Chains(), rs.Hooks...) {
			for i := range c.Rules {
				r := &c.Rules[i]
				text := string(r.AppendSave(nil))
				if strings.ContainsAny(text, "\n\r") {
					t.Fatalf("chain %s: a rule over more than one line: %q", c.Name, text)
				}
				back, err := parseSavedRule(strings.TrimPrefix(text, " "))
				if err != nil {
					t.Fatalf("chain %s: rule %q does not read back: %v", c.Name, text, err)
				}
				if back.Comment != r.Comment {
					t.Fatalf("chain %s: comment %q reads back as %q", c.Name, r.Comment, back.Comment)
				}
			}
		}
	})
}
