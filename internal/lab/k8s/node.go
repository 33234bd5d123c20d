package k8s

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"
)

// Paths a production node uses, which every lab node has too: each node's
// kubelet and containerd run in a mount namespace of their own where these
// are bind mounts of the node's own directories (see NodeMounts), so the
// manifest's hostPath volumes and the runtime's defaults work unchanged
// and several nodes share one machine.
const (
	ContainerdSocket = "/run/containerd/containerd.sock"
	CNIConfDir       = "/etc/cni/net.d"
	CNIBinDir        = "/opt/cni/bin"
	KubeletRootDir   = "/var/lib/kubelet"
)

// NodeMounts are the directories a lab node has of its own: each is a
// bind mount of Node.Dir/root/<path> in the node's mount namespace.
var NodeMounts = []string{
	"/etc/cni/net.d",
	"/opt/cni/bin",
	"/var/lib/cni",
	"/var/lib/kubelet",
	"/var/lib/containerd",
	"/run/containerd",
	"/var/log/pods",
	"/var/log/containers",
	"/usr/libexec/kubernetes",
	"/etc/kubernetes",
}

// PauseImage is the sandbox image, the one e2e v1.37.2 asks for.
const PauseImage = "registry.k8s.io/pause:3.10.2"

// Node is one lab node as its kubelet and containerd see it.
type Node struct {
	Name   string
	IP     netip.Addr
	Labels map[string]string
	// Dir is the node's directory: root/ holds the bind-mount sources
	// of NodeMounts, and the config files live beside it.
	Dir string
	// CgroupRoot is the node's cgroup (cgroupfs driver; cgroup v1 or
	// cgroup2 alone), under which the kubelet puts kubepods.
	CgroupRoot string
	// RuncBinary is the runc containerd runs.
	RuncBinary string
}

// KubeletConfig renders the node's KubeletConfiguration. The settings
// that differ from a production node are what one machine hosting several
// nodes, on cgroup v1 or v2 and without CAP_SYS_RESOURCE, needs (see
// ../shared DESIGN "The Kubernetes lab"): cgroupfs with a per-node
// cgroupRoot, failCgroupV1 false (v1 only), oomScoreAdj 0; and what a throwaway lab
// wants: no image garbage collection (images are imported, never pulled)
// and eviction only when the machine is nearly full.
func KubeletConfig(c *Cluster, n *Node) []byte {
	return []byte(fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: %s
cgroupsPerQOS: true
enforceNodeAllocatable: [pods]
containerRuntimeEndpoint: unix://%s
oomScoreAdj: 0
address: %s
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
clusterDomain: %s
clusterDNS: [%s]
resolvConf: %s
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: %s}
authorization:
  mode: Webhook
failSwapOn: false
protectKernelDefaults: false
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: "1%%"
  imagefs.available: "1%%"
  nodefs.inodesFree: "1%%"
nodeStatusReportFrequency: 10s
runtimeRequestTimeout: 5m
volumePluginDir: /usr/libexec/kubernetes/kubelet-plugins/volume/exec
`, n.CgroupRoot, ContainerdSocket, n.IP, ClusterDomain, c.DNSServiceIP(),
		n.Dir+"/resolv.conf", c.File("ca.crt")))
}

// ResolvConf is the node's resolv.conf: the lab has no DNS beyond the
// cluster's, so pods with dnsPolicy Default (CoreDNS itself) get none.
const ResolvConf = "# kdive lab: no upstream DNS; the cluster's DNS is kube-dns\n"

// KubeletArgs is the node's kubelet command line.
func KubeletArgs(c *Cluster, n *Node) []string {
	keys := make([]string, 0, len(n.Labels))
	for k := range n.Labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var labels []string
	for _, k := range keys {
		labels = append(labels, k+"="+n.Labels[k])
	}
	args := []string{
		"--config=" + n.Dir + "/kubelet.yaml",
		"--kubeconfig=" + c.Kubeconfig(KubeletIdentity(n.Name)),
		"--hostname-override=" + n.Name,
		"--node-ip=" + n.IP.String(),
		"--cert-dir=" + KubeletRootDir + "/pki",
		"--v=1",
	}
	if len(labels) > 0 {
		args = append(args, "--node-labels="+strings.Join(labels, ","))
	}
	return args
}

// ContainerdConfig renders the node's containerd configuration (version 3,
// containerd 2.x). Its paths are the production ones, which are the node's
// own in its mount namespace. NRI and tracing are off; the CRI settings are
// those one machine hosting several nodes needs: network namespaces under
// the state directory, oom_score_adj never lowered (no CAP_SYS_RESOURCE),
// no hugetlb controller (none on this machine's cgroup v1), runc with
// cgroupfs and a runc root of the node's own; and the pod's loopback set
// up by containerd itself, so a node needs no CNI plugin but kdive's.
func ContainerdConfig(n *Node) []byte {
	return []byte(fmt.Sprintf(`version = 3
root = "/var/lib/containerd"
state = "/run/containerd"
temp = "/var/lib/containerd/tmp"
disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = %q

[ttrpc]
  address = "%s.ttrpc"

[plugins."io.containerd.cri.v1.runtime"]
  enable_selinux = false
  netns_mounts_under_state_dir = true
  restrict_oom_score_adj = true
  disable_hugetlb_controller = true
  tolerate_missing_hugetlb_controller = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = %q
        SystemdCgroup = false
        Root = "/run/containerd/runc"
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = [%q]
    conf_dir = %q
    use_internal_loopback = true

[plugins."io.containerd.cri.v1.images"]
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = %q

[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
`, ContainerdSocket, ContainerdSocket, n.RuncBinary, CNIBinDir, CNIConfDir, PauseImage))
}
