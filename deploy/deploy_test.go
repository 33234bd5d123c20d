// Package deploy_test checks the cluster install manifest: every object
// decodes strictly into its Kubernetes type, the agent configuration in the
// ConfigMap is valid, and the ClusterRole grants only what the agent uses.
package deploy_test

import (
	"os"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/kdive/kdive/internal/agent"
)

func TestManifest(t *testing.T) {
	b, err := os.ReadFile("kdive.yaml")
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]bool{}
	for _, doc := range strings.Split(string(b), "\n---\n") {
		j, err := yaml.YAMLToJSON([]byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		var tm struct{ Kind string }
		_ = yaml.Unmarshal(j, &tm)
		var obj any
		switch tm.Kind {
		case "ServiceAccount":
			obj = &corev1.ServiceAccount{}
		case "ClusterRole":
			obj = &rbacv1.ClusterRole{}
		case "ClusterRoleBinding":
			obj = &rbacv1.ClusterRoleBinding{}
		case "ConfigMap":
			obj = &corev1.ConfigMap{}
		case "DaemonSet":
			obj = &appsv1.DaemonSet{}
		default:
			t.Fatalf("unexpected kind %q", tm.Kind)
		}
		strict, err := kjson.UnmarshalStrict(j, obj)
		if err != nil || len(strict) > 0 {
			t.Fatalf("%s: %v %v", tm.Kind, err, strict)
		}
		kinds[tm.Kind] = true
		switch o := obj.(type) {
		case *corev1.ConfigMap:
			cfg, err := agent.ParseConfiguration([]byte(o.Data["agent.yaml"]))
			if err != nil {
				t.Fatal(err)
			}
			cfg.NodeName = "node-1" // the DaemonSet sets NODE_NAME
			cfg.Default()
			if err := cfg.Validate(); err != nil {
				t.Errorf("the ConfigMap's agent configuration: %v", err)
			}
		case *rbacv1.ClusterRole:
			for _, r := range o.Rules {
				if strings.Join(r.Verbs, ",") != "list,watch" {
					t.Errorf("ClusterRole grants %v on %v; the agent only lists and watches", r.Verbs, r.Resources)
				}
			}
		case *appsv1.DaemonSet:
			s := o.Spec.Template.Spec
			if !s.HostNetwork || s.PriorityClassName != "system-node-critical" || len(s.Tolerations) != 1 || s.Tolerations[0].Operator != corev1.TolerationOpExists {
				t.Errorf("DaemonSet pod spec: hostNetwork %v, priority %q, tolerations %v", s.HostNetwork, s.PriorityClassName, s.Tolerations)
			}
			mounts := map[string]bool{}
			for _, m := range s.Containers[0].VolumeMounts {
				mounts[m.MountPath] = true
			}
			for _, want := range []string{"/etc/cni/net.d", "/opt/cni/bin", "/run/xtables.lock", "/lib/modules", "/var/lib/cni/kdive"} {
				if !mounts[want] {
					t.Errorf("the agent does not mount %s", want)
				}
			}
		}
	}
	if len(kinds) != 5 {
		t.Errorf("kinds = %v", kinds)
	}
}
