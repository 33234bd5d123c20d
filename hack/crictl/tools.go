//go:build tools

// This module exists only to build crictl, at a released version, for
// inspecting the lab's containerd instances (make kubernetes). It is a module
// of its own so that cri-tools' dependencies never move those of the
// Kubernetes or containerd builds.
package tools

import _ "sigs.k8s.io/cri-tools/cmd/crictl"
