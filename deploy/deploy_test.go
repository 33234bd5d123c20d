// Package deploy_test checks the cluster install manifest: every object
// decodes strictly into its Kubernetes type, the agent configuration in the
// ConfigMap is valid, and the ClusterRole grants only what the agent uses.
package deploy_test

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/kdive/kdive/deploy"
	"github.com/kdive/kdive/internal/agent"
)

func TestManifest(t *testing.T) {
	o, err := deploy.Decode(deploy.Manifest)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := agent.ParseConfiguration([]byte(o.ConfigMap.Data["agent.yaml"]))
	if err != nil {
		t.Fatal(err)
	}
	cfg.NodeName = "node-1" // the DaemonSet sets NODE_NAME
	cfg.Default()
	if err := cfg.Validate(); err != nil {
		t.Errorf("the ConfigMap's agent configuration: %v", err)
	}
	for _, r := range o.ClusterRole.Rules {
		if strings.Join(r.Verbs, ",") != "list,watch" {
			t.Errorf("ClusterRole grants %v on %v; the agent only lists and watches", r.Verbs, r.Resources)
		}
	}
	s := o.DaemonSet.Spec.Template.Spec
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
	// The init step runs `kdive install-cni` into the mounts it has.
	if len(s.InitContainers) != 1 {
		t.Fatalf("init containers: %d, want 1", len(s.InitContainers))
	}
	ic := s.InitContainers[0]
	initMounts := map[string]bool{}
	for _, m := range ic.VolumeMounts {
		initMounts[m.MountPath] = true
	}
	args := strings.Join(ic.Command, " ")
	for _, dir := range []string{"/host/opt/cni/bin", "/host/etc/cni/net.d", "/etc/kdive"} {
		if !initMounts[dir] || !strings.Contains(args, dir) {
			t.Errorf("install-cni: %s mounted %v, in %q", dir, initMounts[dir], args)
		}
	}
	if !strings.HasPrefix(args, "kdive install-cni ") || len(ic.Env) == 0 || ic.Env[0].Name != "NODE_NAME" {
		t.Errorf("install-cni command %q env %v", args, ic.Env)
	}
}

func TestDecodeRefusesUnknownFields(t *testing.T) {
	bad := strings.Replace(string(deploy.Manifest), "hostNetwork: true", "hostNetwork: true\n      hostNetwrok: true", 1)
	if _, err := deploy.Decode([]byte(bad)); err == nil || !strings.Contains(err.Error(), "hostNetwrok") {
		t.Errorf("a misspelt field: err = %v, want one naming hostNetwrok", err)
	}
	if _, err := deploy.Decode([]byte(string(deploy.Manifest) + "\n---\nkind: Secret\n")); err == nil || !strings.Contains(err.Error(), "Secret") {
		t.Errorf("an unexpected kind: err = %v", err)
	}
}
