package lab

import (
	"path/filepath"

	"github.com/containernetworking/cni/libcni"

	"github.com/kdive/kdive/internal/agent"
	"github.com/kdive/kdive/internal/lab/k8s"
)

// Where a lab node's CNI state lives, for tools that read it (kdive show):
// the same directories the node's agent and kdive-cni are given, or in a
// Kubernetes lab the production paths inside the node's mount namespace,
// which are the node's own directories under root/ (k8s.NodeMounts).

// IPAMDir is the IPAM store of a lab node (kdive-cni's dataDir there).
func (p *Plan) IPAMDir(node string) string {
	if p.Kubernetes != nil {
		return p.nodeRoot(node, agent.DefaultDataDir)
	}
	return p.ipamDir(node)
}

// ConfDir is a lab node's CNI config directory (its net.d).
func (p *Plan) ConfDir(node string) string {
	if p.Kubernetes != nil {
		return p.nodeRoot(node, k8s.CNIConfDir)
	}
	return p.confDir(node)
}

// CNICacheDir is the libcni cache directory the runtime of a lab node
// writes (results of every pod's CNI ADD, with the pod's name in its
// CNI_ARGS), as /var/lib/cni is a container runtime's: one for the whole
// plain lab, whose pods the lab attaches itself; each node's containerd's
// in a Kubernetes lab.
func (p *Plan) CNICacheDir(node string) string {
	if p.Kubernetes != nil {
		return p.nodeRoot(node, libcni.CacheDir)
	}
	return p.cniCacheDir()
}

// nodeRoot is where path of a Kubernetes lab node's mount namespace lives
// on the host.
func (p *Plan) nodeRoot(node, path string) string {
	return filepath.Join(p.nodeDir(node), "root", path)
}
