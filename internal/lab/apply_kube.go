package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/client-go/kubernetes"
)

// lab apply and lab delete on a Kubernetes lab: the same objects, decoded
// and validated as a plain lab's, go to the API server, whose controllers,
// scheduler and kubelets do what the plain lab's control plane does itself.

// fieldManager owns the fields lab apply sets (server-side apply).
const fieldManager = "kdive-lab"

// deleteTimeout bounds the wait for a deleted object to be gone.
const deleteTimeout = 2 * time.Minute

// applyKube validates objs as the plain lab does (against the Services
// the cluster has), checks that pods naming a node or a node selector fit
// a node of the lab, makes kdive-echo containers run kdive's echo server
// and applies the objects (kubeApply).
func applyKube(ctx context.Context, s *State, objs Objects, fp *field.Path) ([]string, error) {
	p := s.Plan
	cs, done, err := KubeClient(s)
	if err != nil {
		return nil, err
	}
	defer done()
	existing, err := cs.CoreV1().Services(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("lab %s: list services: %w", p.Name, err)
	}
	errs := objs.validate(p, existing.Items, fp)
	placed := Objects{Pods: slices.Clone(objs.Pods)} // schedule sets the copies' nodeName
	errs = append(errs, placed.schedule(p, fp)...)
	if len(errs) > 0 {
		return nil, &InvalidError{Lab: p.Name, Errs: errs}
	}
	image, err := KdiveImage()
	if err != nil {
		return nil, err
	}
	for i := range objs.Deployments {
		EchoContainers(&objs.Deployments[i].Spec.Template.Spec, image)
	}
	for i := range objs.Pods {
		EchoContainers(&objs.Pods[i].Spec, image)
	}
	return kubeApply(ctx, cs, &objs)
}

// kubeApply creates the namespaces that are missing, then applies the
// Services, Deployments and Pods server-side, as kubectl apply
// --server-side does: each is created, or changed to what is given. It
// returns one line per object created or changed.
func kubeApply(ctx context.Context, cs kubernetes.Interface, objs *Objects) ([]string, error) {
	var changes []string
	seen := map[string]bool{}
	for _, ns := range objs.namespaces() {
		if seen[ns] {
			continue
		}
		seen[ns] = true
		_, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
		switch {
		case err == nil:
			changes = append(changes, "namespace/"+ns+" created")
		case !apierrors.IsAlreadyExists(err):
			return changes, fmt.Errorf("namespace %s: %w", ns, err)
		}
	}
	note := func(kind string, o metav1.Object, what, suffix string, err error) error {
		if err != nil {
			return fmt.Errorf("%s %s/%s: %w", kind, o.GetNamespace(), o.GetName(), err)
		}
		if what != "" {
			changes = append(changes, kind+"/"+o.GetNamespace()+"/"+o.GetName()+" "+what+suffix)
		}
		return nil
	}
	for i := range objs.Services {
		o := &objs.Services[i]
		what, err := serverApply(ctx, cs.CoreV1().Services(o.Namespace), o)
		if err := note("service", o, what, "", err); err != nil {
			return changes, err
		}
	}
	for i := range objs.Deployments {
		o := &objs.Deployments[i]
		what, err := serverApply(ctx, cs.AppsV1().Deployments(o.Namespace), o)
		if err := note("deployment", o, what, "", err); err != nil {
			return changes, err
		}
	}
	for i := range objs.Pods {
		o := &objs.Pods[i]
		what, err := serverApply(ctx, cs.CoreV1().Pods(o.Namespace), o)
		suffix := ""
		if o.Spec.NodeName != "" {
			suffix = " on " + o.Spec.NodeName
		}
		if err := note("pod", o, what, suffix, err); err != nil {
			return changes, err
		}
	}
	return changes, nil
}

// typedClient is the part of a client-go typed client serverApply uses.
type typedClient[T metav1.Object] interface {
	Get(ctx context.Context, name string, opts metav1.GetOptions) (T, error)
	Patch(ctx context.Context, name string, pt types.PatchType, data []byte, opts metav1.PatchOptions, subresources ...string) (T, error)
}

// serverApply applies obj server-side and says what happened: "created",
// "configured", or "" when the object was already as given. Whether it
// would change anything is asked first with a dry run, as kubectl diff
// does: comparing resource versions would also count what controllers
// wrote meanwhile (a Deployment's status).
func serverApply[T metav1.Object](ctx context.Context, c typedClient[T], obj metav1.Object) (string, error) {
	old, err := c.Get(ctx, obj.GetName(), metav1.GetOptions{})
	created := apierrors.IsNotFound(err)
	if err != nil && !created {
		return "", err
	}
	body, err := json.Marshal(obj)
	if err != nil {
		return "", err
	}
	force := true
	opts := metav1.PatchOptions{FieldManager: fieldManager, Force: &force}
	if !created {
		dry := opts
		dry.DryRun = []string{metav1.DryRunAll}
		would, err := c.Patch(ctx, obj.GetName(), types.ApplyPatchType, body, dry)
		if err != nil {
			return "", err
		}
		if sameDesired(old, would) {
			return "", nil
		}
	}
	if _, err := c.Patch(ctx, obj.GetName(), types.ApplyPatchType, body, opts); err != nil {
		return "", err
	}
	if created {
		return "created", nil
	}
	return "configured", nil
}

// sameDesired compares what a user declares of two versions of an object:
// its labels, annotations and spec.
func sameDesired(a, b any) bool {
	pick := func(o any) map[string]any {
		var m map[string]any
		if j, err := json.Marshal(o); err == nil {
			_ = json.Unmarshal(j, &m)
		}
		meta, _ := m["metadata"].(map[string]any)
		return map[string]any{"labels": meta["labels"], "annotations": meta["annotations"], "spec": m["spec"]}
	}
	return reflect.DeepEqual(pick(a), pick(b))
}

// deleteKube deletes one Pod, Deployment (with its ReplicaSets and pods:
// foreground deletion) or Service through the API server and waits until
// it is gone, as kubectl delete does.
func deleteKube(ctx context.Context, s *State, kind, ns, name string) ([]string, error) {
	cs, done, err := KubeClient(s)
	if err != nil {
		return nil, err
	}
	defer done()
	var (
		what string
		del  func(context.Context, string, metav1.DeleteOptions) error
		get  func() error
	)
	switch strings.ToLower(kind) {
	case "pod", "pods", "po":
		c := cs.CoreV1().Pods(ns)
		what, del = "pod", c.Delete
		get = func() error { _, err := c.Get(ctx, name, metav1.GetOptions{}); return err }
	case "deployment", "deployments", "deploy":
		c := cs.AppsV1().Deployments(ns)
		what, del = "deployment", c.Delete
		get = func() error { _, err := c.Get(ctx, name, metav1.GetOptions{}); return err }
	case "service", "services", "svc":
		c := cs.CoreV1().Services(ns)
		what, del = "service", c.Delete
		get = func() error { _, err := c.Get(ctx, name, metav1.GetOptions{}); return err }
	default:
		return nil, fmt.Errorf("%q: kind must be pod, deployment or service", kind)
	}
	key := ns + "/" + name
	policy := metav1.DeletePropagationForeground
	if err := del(ctx, name, metav1.DeleteOptions{PropagationPolicy: &policy}); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("lab %s has no %s %s", s.Plan.Name, what, key)
		}
		return nil, fmt.Errorf("delete %s %s: %w", what, key, err)
	}
	err = poll(ctx, deleteTimeout, func() error {
		switch err := get(); {
		case apierrors.IsNotFound(err):
			return nil
		case err != nil:
			return err
		}
		return fmt.Errorf("%s %s is still there", what, key)
	})
	if err != nil {
		return nil, fmt.Errorf("delete %s %s: %w", what, key, err)
	}
	return []string{what + "/" + key + " deleted"}, nil
}
