// Package deploy holds the cluster install manifest, kdive.yaml (embedded
// here so tests install exactly what users apply), and decodes it strictly
// into its Kubernetes types.
package deploy

import (
	_ "embed"
	"fmt"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// Manifest is deploy/kdive.yaml.
//
//go:embed kdive.yaml
var Manifest []byte

// Objects are the manifest's objects, one field per kind it holds.
type Objects struct {
	ServiceAccount     *corev1.ServiceAccount
	ClusterRole        *rbacv1.ClusterRole
	ClusterRoleBinding *rbacv1.ClusterRoleBinding
	ConfigMap          *corev1.ConfigMap
	DaemonSet          *appsv1.DaemonSet
}

// Decode decodes a manifest strictly: an unknown field, a duplicate kind or
// an unexpected kind is an error naming the document.
func Decode(manifest []byte) (*Objects, error) {
	var o Objects
	for i, doc := range strings.Split(string(manifest), "\n---\n") {
		j, err := yaml.YAMLToJSON([]byte(doc))
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", i+1, err)
		}
		var tm struct{ Kind string }
		if err := yaml.Unmarshal(j, &tm); err != nil {
			return nil, fmt.Errorf("document %d: %w", i+1, err)
		}
		var obj any
		switch tm.Kind {
		case "ServiceAccount":
			obj = set(&o.ServiceAccount)
		case "ClusterRole":
			obj = set(&o.ClusterRole)
		case "ClusterRoleBinding":
			obj = set(&o.ClusterRoleBinding)
		case "ConfigMap":
			obj = set(&o.ConfigMap)
		case "DaemonSet":
			obj = set(&o.DaemonSet)
		default:
			return nil, fmt.Errorf("document %d: unexpected kind %q", i+1, tm.Kind)
		}
		if obj == nil {
			return nil, fmt.Errorf("document %d: a second %s", i+1, tm.Kind)
		}
		strict, err := kjson.UnmarshalStrict(j, obj)
		if err != nil {
			return nil, fmt.Errorf("document %d (%s): %w", i+1, tm.Kind, err)
		}
		if len(strict) > 0 {
			return nil, fmt.Errorf("document %d (%s): %v", i+1, tm.Kind, strict)
		}
	}
	if o.ServiceAccount == nil || o.ClusterRole == nil || o.ClusterRoleBinding == nil || o.ConfigMap == nil || o.DaemonSet == nil {
		return nil, fmt.Errorf("the manifest lacks a kind: %+v", o)
	}
	return &o, nil
}

// set allocates *p and returns it, or nil when *p is already set.
func set[T any](p **T) *T {
	if *p != nil {
		return nil
	}
	*p = new(T)
	return *p
}
