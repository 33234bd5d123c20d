package lab

import (
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/source/labstore"
)

// What tools read of a lab, for both kinds, without building one (the
// Kubernetes lab's own run is internal/verify's TestKubernetesLabTools).

func TestNodePathsByKind(t *testing.T) {
	plain, kube := plainAndKube(t)
	root := filepath.Join(Dir("kvk"), "nodes", "node-2", "root")
	for _, c := range []struct{ what, got, want string }{
		{"plain IPAM", plain.IPAMDir("node-2"), filepath.Join(Dir("kvp"), "nodes", "node-2", "ipam")},
		{"plain net.d", plain.ConfDir("node-2"), filepath.Join(Dir("kvp"), "nodes", "node-2", "net.d")},
		{"plain CNI cache", plain.CNICacheDir("node-2"), filepath.Join(Dir("kvp"), "cni", "cache")},
		{"Kubernetes IPAM", kube.IPAMDir("node-2"), root + "/var/lib/cni/kdive"},
		{"Kubernetes net.d", kube.ConfDir("node-2"), root + "/etc/cni/net.d"},
		{"Kubernetes CNI cache", kube.CNICacheDir("node-2"), root + "/var/lib/cni"},
	} {
		if c.got != c.want {
			t.Errorf("%s: %s, want %s", c.what, c.got, c.want)
		}
	}
}

func TestPodNetNSPathByKind(t *testing.T) {
	plain, kube := plainAndKube(t)
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web-0", UID: "no-such-uid"}, Spec: corev1.PodSpec{NodeName: "node-3"}}
	if got, err := PodNetNSPath(&State{Plan: plain}, pod); err != nil || got != kernel.NetNSDir+"/kdive-kvp.pod.default.web-0" {
		t.Errorf("plain: %q, %v", got, err)
	}
	if got, err := PodNetNSPath(&State{Plan: kube}, pod); err == nil {
		t.Errorf("Kubernetes pod without a process: %q, want an error", got)
	}
	pod.Spec.HostNetwork = true
	if got, err := PodNetNSPath(&State{Plan: kube}, pod); err != nil || got != kernel.NetNSDir+"/kdive-kvk.node-3" {
		t.Errorf("Kubernetes hostNetwork pod: %q, %v; want node-3's namespace", got, err)
	}
}

func TestLastChangeKubernetes(t *testing.T) {
	kube, _, err := Prepare("kvk", Source{Preset: "D", Kubernetes: true})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 12, 7, 2, 0, 0, 0, time.UTC)
	meta := func(ns string, created, managed time.Duration) metav1.ObjectMeta {
		m := metav1.ObjectMeta{Namespace: ns, CreationTimestamp: metav1.NewTime(t0.Add(created))}
		at := metav1.NewTime(t0.Add(managed))
		m.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kube-controller-manager", Time: &at}}
		return m
	}
	snap := &labstore.Snapshot{
		Services: []corev1.Service{{ObjectMeta: meta("kdive-verify", 0, 2*time.Second)}, {ObjectMeta: meta("other", 0, time.Hour)}},
	}
	snap.EndpointSlices = []discoveryv1.EndpointSlice{{ObjectMeta: meta("kdive-verify", 3*time.Second, time.Second)}}
	got, err := LastChange(&State{Plan: kube}, snap, "kdive-verify")
	if err != nil || !got.Equal(t0.Add(3*time.Second)) {
		t.Errorf("LastChange: %s, %v; want %s (the slice's creation; other namespaces do not count)", got, err, t0.Add(3*time.Second))
	}
}

// plainAndKube are preset D's plans as lab kvp and as Kubernetes lab kvk.
func plainAndKube(t *testing.T) (plain, kube *Plan) {
	t.Helper()
	plain, _, err := Prepare("kvp", Source{Preset: "D"})
	if err != nil {
		t.Fatal(err)
	}
	kube, _, err = Prepare("kvk", Source{Preset: "D", Kubernetes: true})
	if err != nil {
		t.Fatal(err)
	}
	return plain, kube
}
