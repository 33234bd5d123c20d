package verify

import (
	"context"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/kdive/kdive/internal/lab"
	"github.com/kdive/kdive/internal/source/labstore"
)

// A target is what the suite runs on, a lab or a cluster: where its
// objects are read and written and where a pod's traffic starts.
type target interface {
	// snapshot reads the nodes, pods, Services and EndpointSlices.
	snapshot(ctx context.Context) (*labstore.Snapshot, error)
	// apply creates the workload's objects, returning what changed.
	apply(ctx context.Context, w workloadSpec) ([]string, error)
	// podOrigin is where traffic from a running pod starts.
	podOrigin(pod *corev1.Pod) (origin, error)
	// lastChange is when the workload's Services or EndpointSlices last
	// changed: every agent must have synced after it.
	lastChange(snap *labstore.Snapshot) (time.Time, error)
	// remove deletes the workload.
	remove(ctx context.Context) error
	// settles says the workload takes its time after apply (controllers,
	// kubelets, a cloud), so the suite polls until it is in place.
	settles() bool
}

// openLab makes the target a lab: its nodes are the lab's, their traffic
// starts in their namespaces, and the external client is there.
func (e *env) openLab(rep *Report) error {
	st, err := lab.Load(e.opts.Lab)
	if err != nil {
		return err
	}
	e.kind, e.st, e.plan = onLab, st, st.Plan
	e.target = labTarget{e}
	if e.opts.SyncTimeout <= 0 && st.Plan.Kubernetes != nil {
		e.opts.SyncTimeout = 3 * time.Minute // its pods take a while to start
	}
	if e.opts.SyncTimeout <= 0 {
		e.opts.SyncTimeout = 60 * time.Second
	}
	for _, n := range st.Plan.Nodes {
		e.nodes = append(e.nodes, nodeRef{Name: n.Name, IP: n.IP, Subnet: n.Subnet, host: netnsOrigin{e, n.NetNS}})
	}
	x := st.Plan.External
	e.external = &nodeRef{Name: lab.ExternalName, IP: x.IP, host: netnsOrigin{e, x.NetNS}}
	rep.Lab, rep.ProxyMode = st.Plan.Name, st.Plan.Proxy.Mode
	return nil
}

// labTarget changes a lab through lab.Apply and lab.Delete, as `kdive lab
// apply` does, and reads it through lab.Snapshot.
type labTarget struct{ e *env }

func (t labTarget) snapshot(ctx context.Context) (*labstore.Snapshot, error) {
	return lab.Snapshot(ctx, t.e.st)
}

func (t labTarget) apply(ctx context.Context, w workloadSpec) ([]string, error) {
	return lab.Apply(ctx, t.e.plan.Name, workloadYAML(w), t.e.opts.Binaries)
}

func (t labTarget) podOrigin(pod *corev1.Pod) (origin, error) {
	path, err := lab.PodNetNSPath(t.e.st, pod)
	if err != nil {
		return nil, err
	}
	return netnsOrigin{t.e, path}, nil
}

func (t labTarget) lastChange(snap *labstore.Snapshot) (time.Time, error) {
	return lab.LastChange(t.e.st, snap, Namespace)
}

func (t labTarget) remove(ctx context.Context) error { return removeWorkload(ctx, t.e.plan.Name) }

func (t labTarget) settles() bool { return t.e.plan.Kubernetes != nil }
