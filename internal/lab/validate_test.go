package lab

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/kdive/kdive/internal/source/labstore"
)

// validLab is a one-node lab; objectsLab appends objects to it.
const validLab = `
apiVersion: kdive.dev/v1alpha1
kind: Lab
spec:
  podCIDR: 10.0.0.0/16
  blockSize: 24
  serviceCIDR: 10.1.0.0/16
  podNetwork: {interface: routed, encap: vxlan, encapPolicy: cross-subnet}
  proxy: {mode: nftables}
  subnets: [{name: a, cidr: 172.20.1.0/24}]
  nodes: [{name: n1, subnet: a}]
`

func objectsLab(objects string) string {
	if objects == "" {
		return validLab
	}
	var b strings.Builder
	b.WriteString(validLab + "  objects:\n")
	for _, doc := range strings.Split(strings.TrimSpace(objects), "\n---\n") {
		for i, line := range strings.Split(doc, "\n") {
			if i == 0 {
				b.WriteString("  - " + line + "\n")
			} else {
				b.WriteString("    " + line + "\n")
			}
		}
	}
	return b.String()
}

func planErr(t *testing.T, text string) error {
	t.Helper()
	f, err := Parse([]byte(text))
	if err != nil {
		return err
	}
	p, err := NewPlan("t1", "", f)
	if err == nil && p == nil {
		t.Fatal("NewPlan gave neither a plan nor an error")
	}
	return err
}

func svcYAML(name, spec string) string {
	return "apiVersion: v1\nkind: Service\nmetadata: {name: " + name + "}\nspec: " + spec
}

func podYAML(name, spec string) string {
	return "apiVersion: v1\nkind: Pod\nmetadata: {name: " + name + "}\nspec: " + spec
}

const deployOK = `apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: echo, image: kdive-echo, ports: [{name: http, containerPort: 8080}]}]}`

// TestValidObjects: what the API server accepts, the lab accepts,
// including the forms defaulting fills in.
func TestValidObjects(t *testing.T) {
	objs := strings.Join([]string{
		deployOK,
		svcYAML("web", "{selector: {app: web}, ports: [{port: 80, targetPort: http}]}"),
		svcYAML("multi", "{ports: [{name: dns, port: 53, protocol: UDP}, {name: dns-tcp, port: 53}]}"),
		svcYAML("np", "{type: NodePort, externalTrafficPolicy: Local, ports: [{name: a, port: 53, protocol: UDP, nodePort: 30053}, {name: b, port: 53, protocol: TCP, nodePort: 30053}]}"),
		svcYAML("lb", "{type: LoadBalancer, externalTrafficPolicy: Local, healthCheckNodePort: 32000, loadBalancerSourceRanges: [' 198.51.100.0/24 ', 10.9.0.0/16], ports: [{port: 80}]}"),
		svcYAML("ext", "{externalIPs: [192.0.2.10], externalTrafficPolicy: Cluster, ports: [{port: 80}]}"),
		svcYAML("sticky", "{sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 86400}}, ports: [{port: 80}]}"),
		svcYAML("fixed", "{clusterIP: 10.1.0.10, clusterIPs: [10.1.0.10], ipFamilies: [IPv4], ipFamilyPolicy: SingleStack, ports: [{port: 80}]}"),
		svcYAML("headless", "{clusterIP: None, selector: {app: web}, ports: [{port: 80}]}"),
		svcYAML("close", "{trafficDistribution: PreferClose, internalTrafficPolicy: Local, ports: [{port: 80}]}"),
		podYAML("pinned", "{nodeName: n1, containers: [{name: echo, image: kdive-echo, ports: [{containerPort: 53, protocol: UDP, hostPort: 53}, {containerPort: 53, hostPort: 53}]}]}"),
	}, "\n---\n")
	if err := planErr(t, objectsLab(objs)); err != nil {
		t.Fatal(err)
	}
}

// TestInvalidObjects: each object is refused with upstream's rule and
// message, under the object's path.
func TestInvalidObjects(t *testing.T) {
	const web = "spec.objects[Service default/web]."
	cases := []struct {
		name, objects string
		want          []string
	}{
		{"port 0", svcYAML("web", "{ports: [{name: a, port: 80}, {name: b, port: 0}]}"),
			[]string{web + "spec.ports[1].port: Invalid value: 0: must be between 1 and 65535, inclusive"}},
		{"port too big", svcYAML("web", "{ports: [{port: 65536}]}"),
			[]string{web + "spec.ports[0].port: Invalid value: 65536: must be between 1 and 65535, inclusive"}},
		{"duplicate port", svcYAML("web", "{ports: [{name: a, port: 80}, {name: b, port: 80, protocol: TCP}]}"),
			[]string{web + `spec.ports[1]: Duplicate value: {"port":80,"protocol":"TCP"}`}},
		{"duplicate port name", svcYAML("web", "{ports: [{name: a, port: 80}, {name: a, port: 81}]}"),
			[]string{web + `spec.ports[1].name: Duplicate value: "a"`}},
		{"unnamed ports", svcYAML("web", "{ports: [{port: 80}, {name: b, port: 81}]}"),
			[]string{web + "spec.ports[0].name: Required value"}},
		{"bad port name", svcYAML("web", "{ports: [{name: HTTP, port: 80}]}"),
			[]string{web + `spec.ports[0].name: Invalid value: "HTTP": a lowercase RFC 1123 label`}},
		{"unknown protocol", svcYAML("web", "{ports: [{port: 80, protocol: ICMP}]}"),
			[]string{web + `spec.ports[0].protocol: Unsupported value: "ICMP": supported values: "SCTP", "TCP", "UDP"`}},
		{"bad target port", svcYAML("web", "{ports: [{port: 80, targetPort: 'http_alt'}]}"),
			[]string{web + `spec.ports[0].targetPort: Invalid value: "http_alt"`}},
		{"node port out of range", svcYAML("web", "{type: NodePort, ports: [{port: 80, nodePort: 80}]}"),
			[]string{web + "spec.ports[0].nodePort: Invalid value: 80: provided port is not in the valid range. The range of valid ports is 30000-32767"}},
		{"node port of a ClusterIP service", svcYAML("web", "{ports: [{port: 80, nodePort: 30080}]}"),
			[]string{web + "spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'"}},
		{"node port twice in a service", svcYAML("web", "{type: NodePort, ports: [{name: a, port: 80, nodePort: 30080}, {name: b, port: 81, nodePort: 30080}]}"),
			[]string{web + "spec.ports[1].nodePort: Duplicate value: 30080"}},
		{"node port of another service", svcYAML("web", "{type: NodePort, ports: [{port: 80, nodePort: 30080}]}") + "\n---\n" +
			svcYAML("api", "{type: NodePort, ports: [{port: 80, nodePort: 30080, protocol: UDP}]}"),
			[]string{"spec.objects[Service default/api].spec.ports[0].nodePort: Invalid value: 30080: provided port is already allocated (to Service default/web)"}},
		{"health check port taken", svcYAML("web", "{type: NodePort, ports: [{port: 80, nodePort: 30080}]}") + "\n---\n" +
			svcYAML("api", "{type: LoadBalancer, externalTrafficPolicy: Local, healthCheckNodePort: 30080, ports: [{port: 80}]}"),
			[]string{"spec.objects[Service default/api].spec.healthCheckNodePort: Invalid value: 30080: failed to allocate requested HealthCheck NodePort 30080: provided port is already allocated"}},
		{"health check port without Local", svcYAML("web", "{type: NodePort, healthCheckNodePort: 32000, ports: [{port: 80}]}"),
			[]string{web + "spec.healthCheckNodePort: Invalid value: 32000: may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'"}},
		{"malformed cluster IP", svcYAML("web", "{clusterIP: 10.1.0.300, ports: [{port: 80}]}"),
			[]string{web + `spec.clusterIPs[0]: Invalid value: "10.1.0.300": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)`}},
		{"cluster IP with leading zeros", svcYAML("web", "{clusterIP: 10.1.0.010, ports: [{port: 80}]}"),
			[]string{web + `spec.clusterIPs[0]: Invalid value: "10.1.0.010": must not have leading 0s`}},
		{"cluster IP outside the service CIDR", svcYAML("web", "{clusterIP: 10.2.0.10, ports: [{port: 80}]}"),
			[]string{web + `spec.clusterIPs: Invalid value: ["10.2.0.10"]: failed to allocate IP 10.2.0.10: the provided IP (10.2.0.10) is not in the valid range. The range of valid IPs is 10.1.0.0/16`}},
		{"cluster IP is the network address", svcYAML("web", "{clusterIP: 10.1.0.0, ports: [{port: 80}]}"),
			[]string{web + "spec.clusterIPs", "is not in the valid range"}},
		{"cluster IP of another service", svcYAML("web", "{clusterIP: 10.1.0.10, ports: [{port: 80}]}") + "\n---\n" +
			svcYAML("api", "{clusterIP: 10.1.0.10, ports: [{port: 80}]}"),
			[]string{`spec.objects[Service default/api].spec.clusterIPs: Invalid value: ["10.1.0.10"]: failed to allocate IP 10.1.0.10: provided IP is already allocated (to Service default/web)`}},
		{"IPv6 cluster IP", svcYAML("web", "{clusterIP: 'fd00::10', ports: [{port: 80}]}"),
			[]string{web + "spec.clusterIPs[0]", "IPv6 is not configured on this cluster"}},
		{"clusterIPs disagree", svcYAML("web", "{clusterIP: 10.1.0.10, clusterIPs: [10.1.0.11], ports: [{port: 80}]}"),
			[]string{web + "spec.clusterIPs: Invalid value: [\"10.1.0.11\"]: first value must match `clusterIP`"}},
		{"dual stack", svcYAML("web", "{ipFamilyPolicy: RequireDualStack, ipFamilies: [IPv4, IPv6], ports: [{port: 80}]}"),
			[]string{web + `spec.ipFamilyPolicy: Invalid value: "RequireDualStack": this cluster is not configured for dual-stack services`,
				web + `spec.ipFamilies[1]: Invalid value: "IPv6": not configured on this cluster`}},
		{"malformed external IP", svcYAML("web", "{externalIPs: [192.0.2.1/32], ports: [{port: 80}]}"),
			[]string{web + `spec.externalIPs[0]: Invalid value: "192.0.2.1/32": must be a valid IP address`}},
		{"loopback external IP", svcYAML("web", "{externalIPs: [127.0.0.1], ports: [{port: 80}]}"),
			[]string{web + `spec.externalIPs[0]: Invalid value: "127.0.0.1": may not be in the loopback range (127.0.0.0/8, ::1/128)`}},
		{"malformed source range", svcYAML("web", "{type: LoadBalancer, loadBalancerSourceRanges: [10.0.0.0/33], ports: [{port: 80}]}"),
			[]string{web + `spec.loadBalancerSourceRanges[0]: Invalid value: "10.0.0.0/33": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)`}},
		{"source ranges without a load balancer", svcYAML("web", "{loadBalancerSourceRanges: [10.0.0.0/8], ports: [{port: 80}]}"),
			[]string{web + "spec.loadBalancerSourceRanges: Forbidden: may only be used when `type` is 'LoadBalancer'"}},
		{"bad ingress IP", svcYAML("web", "{type: LoadBalancer, ports: [{port: 80}]}\nstatus: {loadBalancer: {ingress: [{ip: 203.0.113.300}]}}"),
			[]string{web + `status.loadBalancer.ingress[0].ip: Invalid value: "203.0.113.300"`}},
		{"bad selector value", svcYAML("web", "{selector: {app: 'a b'}, ports: [{port: 80}]}"),
			[]string{web + `spec.selector: Invalid value: "a b": a valid label must be an empty string or consist of alphanumeric characters`}},
		{"bad selector key", svcYAML("web", "{selector: {'-app': web}, ports: [{port: 80}]}"),
			[]string{web + `spec.selector: Invalid value: "-app": name part must consist of alphanumeric characters`}},
		{"bad label", "apiVersion: v1\nkind: Service\nmetadata: {name: web, labels: {app: 'x/y'}}\nspec: {ports: [{port: 80}]}",
			[]string{web + `metadata.labels: Invalid value: "x/y"`}},
		{"service name not a DNS-1035 label", svcYAML("web.v1", "{ports: [{port: 80}]}"),
			[]string{`spec.objects[Service default/web.v1].metadata.name: Invalid value: "web.v1": a DNS-1035 label must consist of lower case alphanumeric characters or '-'`}},
		{"service name starting with a digit", svcYAML("1web", "{ports: [{port: 80}]}"),
			[]string{`spec.objects[Service default/1web].metadata.name: Invalid value: "1web": a DNS-1035 label`}},
		{"pod name not a DNS-1123 subdomain", podYAML("Web_0", "{containers: [{name: echo, image: kdive-echo}]}"),
			[]string{`spec.objects[0].metadata.name: Invalid value: "Web_0": a lowercase RFC 1123 subdomain must consist of`}},
		{"headless NodePort", svcYAML("web", "{type: NodePort, clusterIP: None, ports: [{port: 80}]}"),
			[]string{web + `spec.clusterIPs[0]: Invalid value: "None": may not be set to 'None' for NodePort services`}},
		{"unknown affinity", svcYAML("web", "{sessionAffinity: Cookie, ports: [{port: 80}]}"),
			[]string{web + `spec.sessionAffinity: Unsupported value: "Cookie": supported values: "ClientIP", "None"`}},
		{"affinity timeout", svcYAML("web", "{sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}, ports: [{port: 80}]}"),
			[]string{web + "spec.sessionAffinityConfig.clientIP.timeoutSeconds: Invalid value: 0: must be greater than 0 and less than 86400"}},
		{"external policy of a ClusterIP service", svcYAML("web", "{externalTrafficPolicy: Local, ports: [{port: 80}]}"),
			[]string{web + `spec.externalTrafficPolicy: Invalid value: "Local": may only be set for externally-accessible services`}},
		{"unknown external policy", svcYAML("web", "{type: NodePort, externalTrafficPolicy: Nearby, ports: [{port: 80}]}"),
			[]string{web + `spec.externalTrafficPolicy: Unsupported value: "Nearby": supported values: "Cluster", "Local"`}},
		{"unknown internal policy", svcYAML("web", "{internalTrafficPolicy: Node, ports: [{port: 80}]}"),
			[]string{web + `spec.internalTrafficPolicy: Unsupported value: "Node"`}},
		{"unknown traffic distribution", svcYAML("web", "{trafficDistribution: PreferFar, ports: [{port: 80}]}"),
			[]string{web + `spec.trafficDistribution: Unsupported value: "PreferFar"`}},
		{"ExternalName", svcYAML("web", "{type: ExternalName, externalName: example.com}"),
			[]string{web + `spec.type: Unsupported value: "ExternalName": supported values: "ClusterIP", "LoadBalancer", "NodePort"`}},
		{"no ports", svcYAML("web", "{selector: {app: web}}"),
			[]string{web + "spec.ports: Required value"}},
		{"negative replicas", strings.Replace(deployOK, "replicas: 2", "replicas: -1", 1),
			[]string{"spec.objects[Deployment default/web].spec.replicas: Invalid value: -1: must be greater than or equal to 0"}},
		{"selector does not match", strings.Replace(deployOK, "labels: {app: web}", "labels: {app: api}", 1),
			[]string{"spec.objects[Deployment default/web].spec.template.metadata.labels: Invalid value: {\"app\":\"api\"}: `selector` does not match template `labels`"}},
		{"no selector", strings.Replace(deployOK, "  selector: {matchLabels: {app: web}}\n", "", 1),
			[]string{"spec.objects[Deployment default/web].spec.selector: Required value"}},
		{"deployment restart policy", strings.Replace(deployOK, "spec: {containers", "spec: {restartPolicy: Never, containers", 1),
			[]string{`spec.objects[Deployment default/web].spec.template.spec.restartPolicy: Unsupported value: "Never": supported values: "Always"`}},
		{"container port 0", strings.Replace(deployOK, "containerPort: 8080", "containerPort: 0", 1),
			[]string{"spec.objects[Deployment default/web].spec.template.spec.containers[0].ports[0].containerPort: Required value"}},
		{"container port too big", podYAML("p", "{containers: [{name: echo, image: kdive-echo, ports: [{containerPort: 70000}]}]}"),
			[]string{"spec.objects[Pod default/p].spec.containers[0].ports[0].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive"}},
		{"container port protocol", podYAML("p", "{containers: [{name: echo, image: kdive-echo, ports: [{containerPort: 80, protocol: tcp}]}]}"),
			[]string{`spec.objects[Pod default/p].spec.containers[0].ports[0].protocol: Unsupported value: "tcp": supported values: "SCTP", "TCP", "UDP"`}},
		{"container port names", podYAML("p", "{containers: [{name: echo, image: kdive-echo, ports: [{name: http, containerPort: 80}, {name: http, containerPort: 81}, {name: way-too-long-name, containerPort: 82}]}]}"),
			[]string{`spec.objects[Pod default/p].spec.containers[0].ports[1].name: Duplicate value: "http"`,
				`spec.objects[Pod default/p].spec.containers[0].ports[2].name: Invalid value: "way-too-long-name": must be no more than 15 characters`}},
		{"host port twice", podYAML("p", "{containers: [{name: a, image: x, ports: [{containerPort: 80, hostPort: 8080}]}, {name: b, image: x, ports: [{containerPort: 81, hostPort: 8080}]}]}"),
			[]string{`spec.objects[Pod default/p].spec.containers[1].ports[0].hostPort: Duplicate value: "TCP//8080"`}},
		{"no containers", podYAML("p", "{nodeName: n1}"),
			[]string{"spec.objects[Pod default/p].spec.containers: Required value"}},
		{"container without image or name", podYAML("p", "{containers: [{}]}"),
			[]string{"spec.objects[Pod default/p].spec.containers[0].name: Required value", "spec.objects[Pod default/p].spec.containers[0].image: Required value"}},
		{"bad node selector", podYAML("p", "{nodeSelector: {zone: 'a b'}, containers: [{name: echo, image: x}]}"),
			[]string{`spec.objects[Pod default/p].spec.nodeSelector: Invalid value: "a b"`}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := planErr(t, objectsLab(c.objects))
			if err == nil {
				t.Fatal("accepted")
			}
			var inv *InvalidError
			if !errors.As(err, &inv) {
				t.Fatalf("%v is not an *InvalidError", err)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
		})
	}
}

// TestInvalidObjectRefusesFile: one bad object refuses the whole file,
// and every error is reported, not only the first (port 0 gives two, as
// upstream: targetPort defaults to the port).
func TestInvalidObjectRefusesFile(t *testing.T) {
	objs := deployOK + "\n---\n" + svcYAML("web", "{ports: [{port: 80}]}") + "\n---\n" +
		svcYAML("bad", "{ports: [{port: 0}]}") + "\n---\n" + podYAML("p", "{containers: [{name: echo, image: x, ports: [{containerPort: 0}]}]}")
	f, err := Parse([]byte(objectsLab(objs)))
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewPlan("t1", "", f)
	if p != nil || err == nil {
		t.Fatalf("plan %v, err %v", p, err)
	}
	inv := err.(*InvalidError)
	if len(inv.Errs) != 3 || !strings.Contains(err.Error(), "Service default/bad") || !strings.Contains(err.Error(), "Pod default/p") {
		t.Errorf("errors:\n%v", err)
	}
}

// TestApplyRefusesUpFront: lab apply validates before it changes anything,
// and checks what the file asks for against the services the lab has.
// It needs no network namespaces: the refusal comes before any.
func TestApplyRefusesUpFront(t *testing.T) {
	old := RunDir
	RunDir = t.TempDir()
	t.Cleanup(func() { RunDir = old })
	p := mustPlan(t, "t1", validLab)
	if err := os.MkdirAll(Dir(p.Name), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := (&State{Plan: p}).save(); err != nil {
		t.Fatal(err)
	}
	existing := corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "dns"},
		Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeNodePort, ClusterIP: "10.1.0.10", ClusterIPs: []string{"10.1.0.10"},
			Ports: []corev1.ServicePort{{Port: 53, Protocol: corev1.ProtocolUDP, NodePort: 30053}},
		},
	}
	store := labstore.Open(p.storeDir())
	if err := store.Update(func(s *labstore.Snapshot) error {
		s.Services = append(s.Services, existing)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadFile(filepath.Join(store.Dir(), labstore.FileName))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ name, objects, want string }{
		{"node port held", svcYAML("web", "{type: NodePort, ports: [{port: 80, nodePort: 30053}]}"),
			"objects[Service default/web].spec.ports[0].nodePort: Invalid value: 30053: provided port is already allocated (to Service default/dns)"},
		{"cluster IP held", svcYAML("web", "{clusterIP: 10.1.0.10, ports: [{port: 80}]}"),
			"objects[Service default/web].spec.clusterIPs: Invalid value: [\"10.1.0.10\"]: failed to allocate IP 10.1.0.10: provided IP is already allocated (to Service default/dns)"},
		{"one bad object of several", deployOK + "\n---\n" + svcYAML("web", "{ports: [{port: 80}, {name: b, port: 81}]}"),
			"objects[Service default/web].spec.ports[0].name: Required value"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Apply(context.Background(), p.Name, []byte(c.objects), Binaries{})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("apply: %v\nwant %q", err, c.want)
			}
			after, _ := os.ReadFile(filepath.Join(store.Dir(), labstore.FileName))
			if string(after) != string(before) {
				t.Error("a refused apply changed the store")
			}
			if s, _ := Load(p.Name); len(s.Plan.Objects.Deployments) != 0 {
				t.Error("a refused apply recorded a deployment")
			}
		})
	}
	// Re-applying the service that holds them is an update, not a conflict.
	again := svcYAML("dns", "{type: NodePort, clusterIP: 10.1.0.10, ports: [{port: 53, protocol: UDP, nodePort: 30053}]}")
	fp := field.NewPath("objects")
	objs, errs := decodeObjects(mustSplit(t, again), fp)
	if len(errs) == 0 {
		errs = objs.validate(p, []corev1.Service{existing}, fp)
	}
	if len(errs) > 0 {
		t.Errorf("re-applying default/dns: %v", errs)
	}
}

func mustSplit(t *testing.T, yaml string) []json.RawMessage {
	t.Helper()
	raw, err := SplitYAML([]byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	return raw
}
