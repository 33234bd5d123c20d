//go:build tools

// This module exists only to build Kubernetes itself, at a released version,
// for the agent's integration tests (kube-apiserver and etcd, see
// internal/source/kubetest) and for the lab's real clusters (the kubelet, the
// controller manager, the scheduler, kubectl and the e2e test image agnhost),
// and upstream's e2e suite (e2e.test, which hack/e2e runs against a lab).
// It is a module of its own so that the product's go.mod never depends on
// k8s.io/kubernetes.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/test/e2e"
	_ "k8s.io/kubernetes/test/images/agnhost"
)
