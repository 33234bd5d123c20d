package lab

import (
	"context"
	"os"
	"strings"
	"testing"
)

const applyObjects = `
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: echo, image: kdive-echo, ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
`

func TestApplyAndDelete(t *testing.T) {
	s := upTestLab(t, "kdt-apply", podLab("bridge", "vxlan", "cross-subnet"))
	ctx := context.Background()
	name := s.Plan.Name
	changes, err := Apply(ctx, name, []byte(applyObjects), testBins(t))
	if err != nil {
		t.Fatal(err)
	}
	want := "service/default/web created|pod/default/web-0 created on n1|pod/default/web-1 created on n2|pod/default/web-2 created on n3|deployment/default/web applied"
	if got := strings.Join(changes, "|"); got != want {
		t.Errorf("apply changes:\n%s\nwant\n%s", got, want)
	}
	st := GetStatus(ctx, s)
	ips := map[string]string{}
	for _, p := range st.Pods {
		ips[p.Name] = p.IP
	}
	var web ServiceStatus
	for _, sv := range st.Services {
		if sv.Name == "web" {
			web = sv
		}
	}
	if web.ClusterIP != "10.1.0.1" || len(web.Ports) != 1 || web.Ports[0].NodePort != 30000 {
		t.Errorf("service web = %+v", web)
	}
	// The new pods are attached and answer across nodes.
	p1 := openNS(t, PodNetNS(name, "default", "p1"))
	for _, w := range []string{"web-0", "web-1", "web-2"} {
		if got, err := httpGet(p1, ips[w], nil); err != nil || got != w {
			t.Errorf("p1 -> %s (%s): %q, %v", w, ips[w], got, err)
		}
	}
	// Through the service too, including web-0 on p1's own bridge, whose
	// replies must pass netfilter to be un-NATed (br_netfilter).
	// (The agents program the last pod's endpoint a moment after Apply.)
	waitAnsweredBy(t, p1, web.ClusterIP+":80", 3)
	// Applying again changes nothing; scaling down removes pods; the
	// service keeps its cluster IP and node port.
	if changes, err := Apply(ctx, name, []byte(applyObjects), testBins(t)); err != nil || strings.Join(changes, "|") != "deployment/default/web applied" {
		t.Errorf("second apply: %v, %v", changes, err)
	}
	scaled := strings.Replace(applyObjects, "replicas: 3", "replicas: 1", 1)
	if changes, err := Apply(ctx, name, []byte(scaled), testBins(t)); err != nil || !strings.Contains(strings.Join(changes, "|"), "pod/default/web-2 deleted") {
		t.Errorf("scale down: %v, %v", changes, err)
	}
	if _, err := os.Stat("/run/netns/" + PodNetNS(name, "default", "web-2")); !os.IsNotExist(err) {
		t.Errorf("web-2's namespace survived the scale-down: %v", err)
	}
	// Bad objects change nothing and say which field is wrong.
	bad := scaled + "---\napiVersion: v1\nkind: Service\nmetadata: {name: dns}\nspec: {ports: [{port: 53, protocol: ICMP}]}\n"
	if _, err := Apply(ctx, name, []byte(strings.Replace(bad, "replicas: 1", "replicas: 2", 1)), testBins(t)); err == nil ||
		!strings.Contains(err.Error(), "objects[Service default/dns].spec.ports[0].protocol") {
		t.Errorf("bad apply: %v", err)
	}
	if _, err := os.Stat("/run/netns/" + PodNetNS(name, "default", "web-1")); !os.IsNotExist(err) {
		t.Error("a rejected apply attached a pod")
	}
	for _, what := range []string{"pod/p1b", "deployment/web", "svc/default/web"} {
		if _, err := Delete(ctx, name, what); err != nil {
			t.Errorf("delete %s: %v", what, err)
		}
	}
	if _, err := Delete(ctx, name, "pod/p1b"); err == nil || !strings.Contains(err.Error(), "no pod default/p1b") {
		t.Errorf("deleting a deleted pod: %v", err)
	}
	st = GetStatus(ctx, s)
	if len(st.Pods) != 3 || len(st.Services) != 0 {
		t.Errorf("after deletes: pods %+v services %+v", st.Pods, st.Services)
	}
}
