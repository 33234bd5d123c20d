//go:build tools

// This module exists only to build containerd, its runc shim and ctr, at a
// released version, for the lab's Kubernetes nodes (make kubernetes). It is
// a module of its own so that the product's go.mod never depends on
// containerd, and so that containerd's dependencies never move those of the
// Kubernetes build (hack/kubernetes).
package tools

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
	_ "github.com/containerd/containerd/v2/cmd/ctr"
)
