package lab

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"sigs.k8s.io/yaml"

	"github.com/kdive/kdive/internal/proxy"
)

// Fuzz tests of the lab's two parsers: lab files (Parse, NewPlan) and
// object files (SplitYAML, then decoding and validation as lab apply does
// them). Neither may panic; every refusal names a field; what is accepted
// prints back (File.Marshal, json.Marshal) into input accepted the same;
// and what the lab accepts, the agent's conversion serves without error.

const maxFuzzInput = 64 << 10

// checkFieldErrors fails unless err is an *InvalidError whose every
// error has a field path.
func checkFieldErrors(t *testing.T, err error) {
	t.Helper()
	var inv *InvalidError
	if !errors.As(err, &inv) || len(inv.Errs) == 0 {
		t.Fatalf("error %v is not an *InvalidError with field errors", err)
	}
	for _, e := range inv.Errs {
		if e.Field == "" || e.Field == "<nil>" {
			t.Fatalf("error %q names no field", e.Error())
		}
	}
}

// FuzzParseLab: lab files, from the presets and the test labs.
func FuzzParseLab(f *testing.F) {
	for _, name := range Presets() {
		b, _ := PresetYAML(name)
		f.Add(b)
	}
	f.Add([]byte(testLab))
	f.Add([]byte(validLab))
	f.Add([]byte(strings.Replace(testLab, "cidr: 172.20.2.0/24", "cidr: 172.20.0.0/16", 1)))
	f.Add([]byte(strings.Replace(validLab, "podCIDR: 10.0.0.0/16", "podCIDR: 127.0.0.0/16", 1)))
	f.Add([]byte("spec: &s {nodes: [*s]}\n"))
	f.Add([]byte(`{"apiVersion": "kdive.dev/v1alpha1", "kind": "Lab", "spec": {"blockSize": 1e99}}`))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > maxFuzzInput {
			return
		}
		lf, err := Parse(data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "lab file") {
				t.Fatalf("error %q does not say it is about the lab file", err)
			}
			return
		}
		p, err := NewPlan("fuzz", "", lf)
		if err != nil {
			checkFieldErrors(t, err)
			return
		}
		out, err := lf.Marshal()
		if err != nil {
			t.Fatalf("marshal an accepted lab file: %v", err)
		}
		lf2, err := Parse(out)
		if err != nil {
			t.Fatalf("accepted, but not once printed: %v\n%s", err, out)
		}
		p2, err := NewPlan("fuzz", "", lf2)
		if err != nil {
			t.Fatalf("accepted, but not once printed: %v\n%s", err, out)
		}
		j1, _ := json.Marshal(p)
		j2, _ := json.Marshal(p2)
		if string(j1) != string(j2) {
			t.Fatalf("the printed lab file plans differently:\n%s\n%s", j1, j2)
		}
	})
}

// fuzzPlan is the lab objects are applied to.
func fuzzPlan(t testing.TB) *Plan {
	lf, err := Parse([]byte(validLab))
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewPlan("fuzz", "", lf)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// FuzzObjects: object files as `kdive lab apply -f` reads them.
func FuzzObjects(f *testing.F) {
	f.Add([]byte(applyObjects))
	f.Add([]byte(deployOK + "\n---\n" + svcYAML("web", "{type: LoadBalancer, externalTrafficPolicy: Local, ports: [{port: 80}]}")))
	f.Add([]byte(svcYAML("web", "{type: NodePort, sessionAffinity: ClientIP, externalIPs: [192.0.2.1], ports: [{name: a, port: 53, protocol: UDP, nodePort: 30053}, {name: b, port: 53, nodePort: 30053}]}")))
	f.Add([]byte(svcYAML("web", "{clusterIP: 10.1.0.10, ports: [{port: 0}]}") + "\n---\n" + svcYAML("web", "{}")))
	f.Add([]byte("apiVersion: v1\nkind: List\nitems:\n- " + strings.ReplaceAll(podYAML("p", "{containers: [{name: c, image: x, ports: [{containerPort: 80, hostPort: 80}]}]}"), "\n", "\n  ")))
	f.Add([]byte("---\n---\nnull\n---\n[1, 2]\n"))
	f.Add([]byte("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n"))
	for _, name := range Presets() {
		b, _ := PresetYAML(name)
		if lf, err := Parse(b); err == nil {
			var docs []string
			for _, o := range lf.Spec.Objects {
				y, _ := yaml.JSONToYAML(o)
				docs = append(docs, string(y))
			}
			f.Add([]byte(strings.Join(docs, "---\n")))
		}
	}
	p := fuzzPlan(f)
	fp := field.NewPath("objects")
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > maxFuzzInput {
			return
		}
		raw, err := SplitYAML(data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "document ") {
				t.Fatalf("error %q does not name the document", err)
			}
			return
		}
		decoded, errs := decodeObjects(raw, fp)
		if len(errs) == 0 {
			errs = decoded.validate(p, nil, fp)
		}
		if len(errs) > 0 {
			checkFieldErrors(t, &InvalidError{Lab: "fuzz", Errs: errs})
			return
		}
		// The decoded objects print back into a file decoded the same.
		var docs []string
		for _, o := range append(append(anyOf(decoded.Deployments), anyOf(decoded.Pods)...), anyOf(decoded.Services)...) {
			b, err := json.Marshal(o)
			if err != nil {
				t.Fatal(err)
			}
			docs = append(docs, string(b))
		}
		raw2, err := SplitYAML([]byte(strings.Join(docs, "\n---\n")))
		if err != nil {
			t.Fatal(err)
		}
		again, errs := decodeObjects(raw2, fp)
		if len(errs) == 0 {
			errs = again.validate(p, nil, fp)
		}
		if len(errs) > 0 || !reflect.DeepEqual(sameOrder(again), sameOrder(decoded)) {
			t.Fatalf("printed objects decode differently (%v):\n%s", errs, strings.Join(docs, "\n"))
		}
		// Planned as a lab does it, every service converts for the agent.
		objs, errs := planObjects(raw, p, fp)
		if len(errs) > 0 {
			checkFieldErrors(t, &InvalidError{Lab: "fuzz", Errs: errs})
			return
		}
		for i := range objs.Services {
			if _, err := proxy.ServicePorts(&objs.Services[i], nil); err != nil {
				t.Fatalf("the lab accepted a service the agent refuses: %v", err)
			}
		}
	})
}

func anyOf[T any](s []T) []any {
	out := make([]any, len(s))
	for i := range s {
		out[i] = s[i]
	}
	return out
}

// sameOrder is o as JSON, so that nil and empty fields compare equal.
func sameOrder(o Objects) string {
	b, _ := json.Marshal(o)
	return string(b)
}

// FuzzServiceFields builds one Service from fuzzed field values: what lab
// validation accepts, the lab allocates without error and the agent's
// conversion serves without error.
func FuzzServiceFields(f *testing.F) {
	f.Add("web", "NodePort", "10.1.0.10", int32(80), int32(30080), "TCP", "192.0.2.1", "198.51.100.0/24", "Local", int32(0), "ClientIP", int32(10), "http")
	f.Add("web", "LoadBalancer", "", int32(443), int32(0), "UDP", "", "10.0.0.0/8", "Local", int32(32000), "None", int32(0), "8443")
	f.Add("web", "", "None", int32(53), int32(0), "SCTP", "::ffff:1.2.3.4", "", "", int32(0), "", int32(0), "")
	f.Add("x", "ClusterIP", "010.1.0.1", int32(0), int32(-1), "icmp", "1.2.3.4/32", "1.2.3.4/33", "Cluster", int32(70000), "Cookie", int32(-5), "-1")
	p := fuzzPlan(f)
	fp := field.NewPath("objects")
	f.Fuzz(func(t *testing.T, name, typ, clusterIP string, port, nodePort int32, proto, extIP, srcRange, etp string, hcnp int32, affinity string, timeout int32, target string) {
		s := corev1.Service{
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
			ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
			Spec: corev1.ServiceSpec{
				Type: corev1.ServiceType(typ), ClusterIP: clusterIP, ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicy(etp),
				HealthCheckNodePort: hcnp, SessionAffinity: corev1.ServiceAffinity(affinity),
				Ports: []corev1.ServicePort{{Name: "p", Port: port, NodePort: nodePort, Protocol: corev1.Protocol(proto), TargetPort: intstr.Parse(target)}},
			},
		}
		if extIP != "" {
			s.Spec.ExternalIPs = []string{extIP}
		}
		if srcRange != "" {
			s.Spec.LoadBalancerSourceRanges = []string{srcRange}
		}
		if timeout != 0 {
			s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: &timeout}}
		}
		b, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		objs, errs := planObjects([]json.RawMessage{b}, p, fp)
		if len(errs) > 0 {
			checkFieldErrors(t, &InvalidError{Lab: "fuzz", Errs: errs})
			return
		}
		for i := range objs.Services {
			if _, err := proxy.ServicePorts(&objs.Services[i], nil); err != nil {
				t.Fatalf("the lab accepted a service the agent refuses: %v\n%s", err, b)
			}
		}
	})
}
