package lab

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/source/labstore"
)

// What a running lab has, for the tools that look at it (lab status,
// show, trace, verify), whichever kind of lab it is: a plain lab's objects
// are in its store and its pods are namespaces the lab named; a Kubernetes
// lab's objects are in its API server and its pods are namespaces
// containerd made. Nothing outside this package needs to know which.

// Snapshot reads the objects of a running lab: its Nodes, Pods, Services
// and EndpointSlices, from the lab's store or, in a Kubernetes lab, from
// the API server (every namespace). A plain lab whose store lab up has not
// written yet has the lab file's pods and services.
func Snapshot(ctx context.Context, s *State) (*labstore.Snapshot, error) {
	p := s.Plan
	if p.Kubernetes == nil {
		snap, err := labstore.Open(p.storeDir()).Read()
		if err != nil {
			return nil, err
		}
		if snap.Revision == 0 {
			snap.Pods, snap.Services = p.Objects.Pods, p.Objects.Services
		}
		return snap, nil
	}
	cs, done, err := KubeClient(s)
	if err != nil {
		return nil, err
	}
	defer done()
	snap, err := kubeSnapshot(ctx, cs)
	if err != nil {
		return nil, fmt.Errorf("lab %s: read the API server: %w", p.Name, err)
	}
	return snap, nil
}

// kubeSnapshot lists the objects a proxy reads from the API server. Its
// revision is the highest resourceVersion of the lists.
func kubeSnapshot(ctx context.Context, cs kubernetes.Interface) (*labstore.Snapshot, error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	all, opts := metav1.NamespaceAll, metav1.ListOptions{}
	snap := &labstore.Snapshot{}
	revision := func(m metav1.ListMeta) {
		if r, err := strconv.ParseInt(m.ResourceVersion, 10, 64); err == nil && r > snap.Revision {
			snap.Revision = r
		}
	}
	nodes, err := cs.CoreV1().Nodes().List(ctx, opts)
	if err != nil {
		return nil, err
	}
	pods, err := cs.CoreV1().Pods(all).List(ctx, opts)
	if err != nil {
		return nil, err
	}
	svcs, err := cs.CoreV1().Services(all).List(ctx, opts)
	if err != nil {
		return nil, err
	}
	slices, err := cs.DiscoveryV1().EndpointSlices(all).List(ctx, opts)
	if err != nil {
		return nil, err
	}
	snap.Nodes, snap.Pods, snap.Services, snap.EndpointSlices = nodes.Items, pods.Items, svcs.Items, slices.Items
	for _, m := range []metav1.ListMeta{nodes.ListMeta, pods.ListMeta, svcs.ListMeta, slices.ListMeta} {
		revision(m)
	}
	return snap, nil
}

// PodNetNSPath is the file of the network namespace of a lab's pod (one
// of Snapshot's): in a plain lab the namespace the lab names after it
// (/var/run/netns/kdive-LAB.pod.NS.NAME, whether it is attached yet or
// not); in a Kubernetes lab that of a process of the pod, found by the
// pod's UID in the lab's cgroups (/proc/PID/ns/net), an error while it
// has none. A hostNetwork pod's is its node's.
func PodNetNSPath(s *State, pod *corev1.Pod) (string, error) {
	p := s.Plan
	if p.Kubernetes == nil {
		return filepath.Join(kernel.NetNSDir, PodNetNS(p.Name, pod.Namespace, pod.Name)), nil
	}
	if pod.Spec.HostNetwork {
		if n, ok := p.Node(pod.Spec.NodeName); ok {
			return filepath.Join(kernel.NetNSDir, n.NetNS), nil
		}
	}
	pid, err := podProcess(p.Name, string(pod.UID))
	if err != nil {
		return "", fmt.Errorf("pod %s: %w", podKey(pod), err)
	}
	return "/proc/" + strconv.Itoa(pid) + "/ns/net", nil
}

// LastChange is when the objects of namespace that a proxy programs
// (Services, EndpointSlices) last changed: in a plain lab the last write
// of its store; in a Kubernetes lab the latest time snap's objects record
// in their managedFields, in whole seconds (the API server keeps no
// finer), so it may be up to a second early.
func LastChange(s *State, snap *labstore.Snapshot, namespace string) (time.Time, error) {
	if s.Plan.Kubernetes == nil {
		fi, err := os.Stat(labstore.Open(s.Plan.storeDir()).Path())
		if err != nil {
			return time.Time{}, fmt.Errorf("lab %s: %w", s.Plan.Name, err)
		}
		return fi.ModTime(), nil
	}
	return LastObjectChange(snap, namespace), nil
}

// LastObjectChange is when the Services and EndpointSlices of namespace in
// a snapshot of an API server last changed: their creation or the latest
// time of their managed fields (which the API server stamps in seconds).
func LastObjectChange(snap *labstore.Snapshot, namespace string) time.Time {
	var last time.Time
	note := func(m *metav1.ObjectMeta) {
		if m.Namespace != namespace {
			return
		}
		t := m.CreationTimestamp.Time
		for _, f := range m.ManagedFields {
			if f.Time != nil && f.Time.After(t) {
				t = f.Time.Time
			}
		}
		if t.After(last) {
			last = t
		}
	}
	for i := range snap.Services {
		note(&snap.Services[i].ObjectMeta)
	}
	for i := range snap.EndpointSlices {
		note(&snap.EndpointSlices[i].ObjectMeta)
	}
	return last
}
