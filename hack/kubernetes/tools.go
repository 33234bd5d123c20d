//go:build tools

// This module exists only to build a real kube-apiserver and etcd, at
// released versions, for the agent's integration tests (see
// internal/source/kubetest). It is a module of its own so that the
// product's go.mod never depends on k8s.io/kubernetes.
package tools

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
