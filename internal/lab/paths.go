package lab

// Where a lab node's CNI state lives, for tools that read it (kdive show):
// the same directories the node's agent and kdive-cni are given.

// IPAMDir is the IPAM store of a lab node (kdive-cni's dataDir there).
func (p *Plan) IPAMDir(node string) string { return p.ipamDir(node) }

// ConfDir is a lab node's CNI config directory (its net.d).
func (p *Plan) ConfDir(node string) string { return p.confDir(node) }

// CNICacheDir is the lab's libcni cache directory (results of every pod's
// CNI ADD, with the pod's name in its CNI_ARGS), as /var/lib/cni is a
// container runtime's.
func (p *Plan) CNICacheDir() string { return p.cniCacheDir() }
