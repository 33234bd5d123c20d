package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"

	"golang.org/x/sys/unix"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"sigs.k8s.io/yaml"

	"github.com/kdive/kdive/internal/source/labstore"
)

// lock serialises the lab's control-plane commands (apply, delete).
func lock(name string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(Dir(name), "lab.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("lab %q: %w", name, ErrNoLab)
		}
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock lab %s: %w", name, err)
	}
	return func() { f.Close() }, nil
}

// SplitYAML splits a multi-document YAML stream (kubectl's format) into
// JSON objects; a `kind: List` contributes its items.
func SplitYAML(data []byte) ([]json.RawMessage, error) {
	var out []json.RawMessage
	for i, doc := range bytes.Split(append([]byte("\n"), data...), []byte("\n---")) {
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		j, err := yaml.YAMLToJSON(doc)
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", i+1, err)
		}
		if string(j) == "null" {
			continue
		}
		var list struct {
			Kind  string            `json:"kind"`
			Items []json.RawMessage `json:"items"`
		}
		if json.Unmarshal(j, &list) == nil && list.Kind == "List" {
			out = append(out, list.Items...)
			continue
		}
		out = append(out, j)
	}
	return out, nil
}

// Apply adds Pods, Deployments and Services to a running lab, or changes
// them, like kubectl apply: new pods are scheduled and attached through
// CNI; a Deployment's replica count adds or removes pods; a Service keeps
// its cluster IP and node ports. Everything is validated first; an invalid
// object changes nothing. It returns one line per change. A Kubernetes
// lab's objects go to its API server (applyKube).
func Apply(ctx context.Context, name string, data []byte, bins Binaries) ([]string, error) {
	unlock, err := lock(name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	s, err := Load(name)
	if err != nil {
		return nil, err
	}
	p := s.Plan
	raw, err := SplitYAML(data)
	if err != nil {
		return nil, err
	}
	fp := field.NewPath("objects")
	objs, errs := decodeObjects(raw, fp)
	if len(errs) > 0 {
		return nil, &InvalidError{Lab: name, Errs: errs}
	}
	if p.Kubernetes != nil {
		return applyKube(ctx, s, objs, fp)
	}
	store := labstore.Open(p.storeDir())
	snap, err := store.Read()
	if err != nil {
		return nil, err
	}
	if errs := objs.validate(p, snap.Services, fp); len(errs) > 0 {
		return nil, &InvalidError{Lab: name, Errs: errs}
	}
	// Services keep what the API server allocated before.
	for i := range objs.Services {
		svc := &objs.Services[i]
		if old := findService(snap.Services, svc.Namespace, svc.Name); old != nil {
			if svc.Spec.ClusterIP == "" {
				svc.Spec.ClusterIP = old.Spec.ClusterIP
			} else if svc.Spec.ClusterIP != old.Spec.ClusterIP {
				errs = append(errs, field.Invalid(fp.Key("Service "+ServiceName(svc)).Child("spec", "clusterIP"), svc.Spec.ClusterIP, "field is immutable"))
			}
			keepNodePorts(svc, old)
			if len(svc.Status.LoadBalancer.Ingress) == 0 && svc.Spec.Type == corev1.ServiceTypeLoadBalancer {
				svc.Status.LoadBalancer = old.Status.LoadBalancer
			}
			if svc.Spec.HealthCheckNodePort == 0 {
				svc.Spec.HealthCheckNodePort = old.Spec.HealthCheckNodePort
			}
		}
	}
	errs = append(errs, objs.expandDeployments(fp)...)
	errs = append(errs, objs.schedule(p, fp)...)
	errs = append(errs, objs.allocateServices(p, fp, snap.Services)...)
	var add, remove []corev1.Pod
	for _, pod := range objs.Pods {
		old := findPod(snap.Pods, pod.Namespace, pod.Name)
		switch {
		case old == nil:
			add = append(add, pod)
		case !reflect.DeepEqual(old.Spec, pod.Spec):
			if len(pod.OwnerReferences) == 0 {
				errs = append(errs, field.Forbidden(fp.Key("Pod "+podKey(&pod)).Child("spec"), "pod updates may not change fields other than the image; delete the pod and apply it again"))
			}
		}
	}
	for _, d := range objs.Deployments {
		for _, old := range snap.Pods {
			if ownedBy(&old, "Deployment", d.Name) && old.Namespace == d.Namespace && findPod(objs.Pods, old.Namespace, old.Name) == nil {
				remove = append(remove, old)
			}
		}
	}
	if len(errs) > 0 {
		return nil, &InvalidError{Lab: name, Errs: errs}
	}

	var changes []string
	err = p.updateStore(ctx, func(sn *labstore.Snapshot) error {
		for _, svc := range objs.Services {
			if i := serviceIndex(sn.Services, svc.Namespace, svc.Name); i >= 0 {
				if !reflect.DeepEqual(sn.Services[i].Spec, svc.Spec) {
					changes = append(changes, "service/"+ServiceName(&svc)+" configured")
				}
				sn.Services[i] = svc
				continue
			}
			sn.Services = append(sn.Services, svc)
			changes = append(changes, "service/"+ServiceName(&svc)+" created")
		}
		for _, pod := range add {
			pod.Status = corev1.PodStatus{Phase: corev1.PodPending}
			sn.Pods = append(sn.Pods, pod)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, pod := range remove {
		if err := p.deletePod(ctx, &pod); err != nil {
			return changes, err
		}
		changes = append(changes, "pod/"+podKey(&pod)+" deleted")
	}
	for i := range add {
		if err := p.attachPod(ctx, bins, &add[i]); err != nil {
			_ = p.deletePod(ctx, &add[i])
			return changes, err
		}
		changes = append(changes, "pod/"+podKey(&add[i])+" created on "+add[i].Spec.NodeName)
	}
	for _, d := range objs.Deployments {
		p.Objects.Deployments = upsertDeployment(p.Objects.Deployments, d)
		changes = append(changes, "deployment/"+d.Namespace+"/"+d.Name+" applied")
	}
	if err := s.save(); err != nil {
		return changes, err
	}
	return changes, nil
}

// Delete removes one object from a running lab: a pod (detached through
// CNI DEL), a Deployment with its pods, or a Service. what is KIND/NAME or
// KIND/NAMESPACE/NAME; the namespace defaults to "default". In a
// Kubernetes lab the API server deletes it (deleteKube).
func Delete(ctx context.Context, name, what string) ([]string, error) {
	kind, rest, ok := strings.Cut(what, "/")
	if !ok || rest == "" {
		return nil, fmt.Errorf("%q: give KIND/NAME or KIND/NAMESPACE/NAME, e.g. pod/web-0", what)
	}
	ns, objName, ok := strings.Cut(rest, "/")
	if !ok {
		ns, objName = "default", rest
	}
	unlock, err := lock(name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	s, err := Load(name)
	if err != nil {
		return nil, err
	}
	p := s.Plan
	if p.Kubernetes != nil {
		return deleteKube(ctx, s, kind, ns, objName)
	}
	snap, err := labstore.Open(p.storeDir()).Read()
	if err != nil {
		return nil, err
	}
	switch strings.ToLower(kind) {
	case "pod", "pods", "po":
		pod := findPod(snap.Pods, ns, objName)
		if pod == nil {
			return nil, fmt.Errorf("lab %s has no pod %s/%s", name, ns, objName)
		}
		if err := p.deletePod(ctx, pod); err != nil {
			return nil, err
		}
		return []string{"pod/" + ns + "/" + objName + " deleted"}, nil
	case "deployment", "deployments", "deploy":
		var changes []string
		found := false
		for i, d := range p.Objects.Deployments {
			if d.Namespace == ns && d.Name == objName {
				p.Objects.Deployments = append(p.Objects.Deployments[:i], p.Objects.Deployments[i+1:]...)
				found = true
				break
			}
		}
		for _, pod := range snap.Pods {
			if pod.Namespace == ns && ownedBy(&pod, "Deployment", objName) {
				found = true
				if err := p.deletePod(ctx, &pod); err != nil {
					return changes, err
				}
				changes = append(changes, "pod/"+podKey(&pod)+" deleted")
			}
		}
		if !found {
			return nil, fmt.Errorf("lab %s has no deployment %s/%s", name, ns, objName)
		}
		return append(changes, "deployment/"+ns+"/"+objName+" deleted"), s.save()
	case "service", "services", "svc":
		err := p.updateStore(ctx, func(sn *labstore.Snapshot) error {
			i := serviceIndex(sn.Services, ns, objName)
			if i < 0 {
				return fmt.Errorf("lab %s has no service %s/%s", name, ns, objName)
			}
			sn.Services = append(sn.Services[:i], sn.Services[i+1:]...)
			return nil
		})
		if err != nil {
			return nil, err
		}
		return []string{"service/" + ns + "/" + objName + " deleted"}, nil
	}
	return nil, fmt.Errorf("%q: kind must be pod, deployment or service", kind)
}

// deletePod detaches a pod and removes it from the store.
func (p *Plan) deletePod(ctx context.Context, pod *corev1.Pod) error {
	err := p.detachPod(ctx, pod)
	serr := p.updateStore(ctx, func(sn *labstore.Snapshot) error {
		for i := range sn.Pods {
			if sn.Pods[i].Namespace == pod.Namespace && sn.Pods[i].Name == pod.Name {
				sn.Pods = append(sn.Pods[:i], sn.Pods[i+1:]...)
				return nil
			}
		}
		return nil
	})
	return errors.Join(err, serr)
}

func findPod(pods []corev1.Pod, ns, name string) *corev1.Pod {
	for i := range pods {
		if pods[i].Namespace == ns && pods[i].Name == name {
			return &pods[i]
		}
	}
	return nil
}

func serviceIndex(svcs []corev1.Service, ns, name string) int {
	for i := range svcs {
		if svcs[i].Namespace == ns && svcs[i].Name == name {
			return i
		}
	}
	return -1
}

func findService(svcs []corev1.Service, ns, name string) *corev1.Service {
	if i := serviceIndex(svcs, ns, name); i >= 0 {
		return &svcs[i]
	}
	return nil
}

// keepNodePorts gives ports without a node port the one the same port
// (by name, else by port and protocol) had before.
func keepNodePorts(svc, old *corev1.Service) {
	for i := range svc.Spec.Ports {
		pt := &svc.Spec.Ports[i]
		if pt.NodePort != 0 {
			continue
		}
		for _, op := range old.Spec.Ports {
			if (pt.Name != "" && pt.Name == op.Name) || (pt.Port == op.Port && protoOrTCP(pt.Protocol) == protoOrTCP(op.Protocol)) {
				pt.NodePort = op.NodePort
				break
			}
		}
	}
}

func protoOrTCP(p corev1.Protocol) corev1.Protocol {
	if p == "" {
		return corev1.ProtocolTCP
	}
	return p
}

func ownedBy(pod *corev1.Pod, kind, name string) bool {
	for _, o := range pod.OwnerReferences {
		if o.Kind == kind && o.Name == name {
			return true
		}
	}
	return false
}

func upsertDeployment(ds []appsv1.Deployment, d appsv1.Deployment) []appsv1.Deployment {
	for i := range ds {
		if ds[i].Namespace == d.Namespace && ds[i].Name == d.Name {
			ds[i] = d
			return ds
		}
	}
	return append(ds, d)
}
