package lab

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/lab/k8s"
	"github.com/kdive/kdive/internal/wait"
)

// A Kubernetes lab (spec.kubernetes) is the same underlay running a real
// cluster instead of the lab's stand-ins:
//
//   - the control plane (etcd, kube-apiserver, kube-controller-manager with
//     node IPAM, kube-scheduler) on the control-plane host;
//   - on every node, in the node's network namespace and a mount namespace
//     of its own (k8s.NodeMounts bind-mounted from the node's directory, so
//     the production paths are the node's own), containerd and a kubelet
//     that registers the Node with its underlay address;
//   - kdive installed by deploy/kdive.yaml (its DaemonSet, the image
//     imported into every node's containerd), CoreDNS as kube-system/kube-dns,
//     and the lab file's objects created through the API server.
//
// Nothing is pulled: every image is imported from bin/ (make kubernetes).

// progress reports what lab up is doing, one line a step.
type progress struct{ w io.Writer }

func (p progress) say(format string, args ...any) {
	if p.w != nil {
		fmt.Fprintf(p.w, format+"\n", args...)
	}
}

// componentError says which component failed and where its log is.
func componentError(component, log string, err error) error {
	return fmt.Errorf("%s: %w (log: %s)", component, err, log)
}

func upKubernetes(ctx context.Context, s *State, opts UpOptions) error {
	p, say := s.Plan, progress{opts.Progress}
	if err := CheckKubernetesBinaries(opts.Binaries); err != nil {
		return err
	}
	runc, _ := exec.LookPath("runc")
	start := time.Now()
	say.say("underlay: router, %d subnets, %d nodes, external client, control plane at %s", len(p.Subnets), len(p.Nodes), p.Kubernetes.ControlPlane.IP)
	if err := buildUnderlay(ctx, p); err != nil {
		return err
	}
	if err := claimHost(p.Name); err != nil {
		return err
	}
	c := p.cluster()
	if err := c.WriteCredentials(); err != nil {
		return fmt.Errorf("control plane credentials: %w", err)
	}
	say.say("control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler on %s", p.Kubernetes.ControlPlane.NetNS)
	cp, err := kernel.OpenNetNS(p.Kubernetes.ControlPlane.NetNS)
	if err != nil {
		return err
	}
	defer cp.Close()
	if err := p.startControlPlane(ctx, cp, opts.Binaries, opts.Timeout); err != nil {
		return err
	}
	cs, err := p.adminClient(cp)
	if err != nil {
		return err
	}
	// The nodes' runtimes at once: importing the images is most of it,
	// and on a slow CPU several minutes one node after another.
	say.say("containerd and images on %d nodes", len(p.Nodes))
	g, gctx := errgroup.WithContext(ctx)
	for _, n := range p.Nodes {
		g.Go(func() error { return p.startRuntime(gctx, n, opts.Binaries, runc, opts.Timeout) })
	}
	if err := g.Wait(); err != nil {
		return err
	}
	// One kubelet after another, so that the range allocator mostly hands
	// out the pod blocks in node order; the plan then records the block
	// each node really got.
	for i := range p.Nodes {
		say.say("%s: kubelet, waiting for the Node and its pod CIDR", p.Nodes[i].Name)
		if err := p.startKubelet(ctx, cs, &p.Nodes[i], opts.Binaries, opts.Timeout); err != nil {
			return err
		}
	}
	if err := s.save(); err != nil {
		return err
	}
	if err := p.routePodBlocks(ctx); err != nil {
		return err
	}
	if p.cloudPodNetwork() {
		say.say("pod network: the cloud's (CNI reference plugins bridge, host-local, portmap; pod blocks routed by the router)")
		for _, n := range p.Nodes {
			if err := p.installReferenceCNI(n, opts.Binaries); err != nil {
				return err
			}
		}
	}
	say.say("kdive: deploy/kdive.yaml (%s proxy, %s pods, %s %s)", p.Proxy.Mode, p.PodNetwork.Interface, p.PodNetwork.Encap, p.PodNetwork.EncapPolicy)
	if err := p.installKdive(ctx, cs); err != nil {
		return err
	}
	// The pod network first, as on any cluster: pods created before
	// their nodes are Ready would all land on the first node that is.
	say.say("waiting: nodes Ready, kdive on every node")
	if err := p.waitKubeReady(ctx, cs, opts.Timeout); err != nil {
		return err
	}
	say.say("CoreDNS: kube-system/kube-dns at %s", c.DNSServiceIP())
	if err := p.installCoreDNS(ctx, cs, opts.Binaries); err != nil {
		return err
	}
	say.say("lab cloud: LoadBalancer IPs from %s; API server on the host at %s", p.LoadBalancerCIDR, p.KubeconfigFile())
	if err := p.startCloud(ctx, cp, opts.Binaries); err != nil {
		return err
	}
	objs, err := p.kubeObjects(s.LabFile)
	if err != nil {
		return err
	}
	if _, err := kubeApply(ctx, cs, objs); err != nil {
		return err
	}
	say.say("waiting: deployments available")
	if err := p.waitKubeReady(ctx, cs, opts.Timeout); err != nil {
		return err
	}
	say.say("up in %s", time.Since(start).Round(100*time.Millisecond))
	return nil
}

// kubeBinaries are the programs of a Kubernetes lab, found beside kdive.
var kubeBinaries = []string{
	"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler",
	"kubelet", "containerd", "containerd-shim-runc-v2", "ctr", "crictl", "kdive-image.tar",
}

// CheckKubernetesBinaries says what a Kubernetes lab lacks of the
// programs and images make kubernetes builds beside kdive, and of runc.
func CheckKubernetesBinaries(bins Binaries) error {
	for _, b := range kubeBinaries {
		if _, err := os.Stat(bins.path(b)); err != nil {
			return fmt.Errorf("a Kubernetes lab needs %s beside kdive (make kubernetes builds it): %w", b, err)
		}
	}
	if _, err := imageArchives(bins); err != nil {
		return err
	}
	for _, name := range referencePlugins {
		if _, err := os.Stat(bins.path(filepath.Join("cni", name))); err != nil {
			return fmt.Errorf("a Kubernetes lab needs the CNI reference plugin cni/%s beside kdive (make kubernetes builds it): %w", name, err)
		}
	}
	if _, err := exec.LookPath("runc"); err != nil {
		return fmt.Errorf("a Kubernetes lab needs runc (Debian package runc): %w", err)
	}
	return nil
}

// path is a file beside kdive (bin/ of make kubernetes).
func (b Binaries) path(name string) string { return filepath.Join(filepath.Dir(b.Kdive), name) }

// startControlPlane starts etcd, the API server (and waits until it is
// ready, at least 90s or timeout), the controller-manager and the
// scheduler.
func (p *Plan) startControlPlane(ctx context.Context, cp *kernel.NetNS, bins Binaries, timeout time.Duration) error {
	c := p.cluster()
	for _, comp := range []struct {
		name string
		args []string
	}{
		{"etcd", c.EtcdArgs()},
		{"kube-apiserver", c.APIServerArgs()},
	} {
		if err := p.startComponent(cp, p.controlPlaneDir(), bins, comp.name, comp.args); err != nil {
			return err
		}
	}
	if err := waitAPIServer(ctx, cp, c, max(timeout, 90*time.Second)); err != nil {
		return componentError("kube-apiserver", p.componentLog(p.controlPlaneDir(), "kube-apiserver"), err)
	}
	if err := p.startComponent(cp, p.controlPlaneDir(), bins, "kube-controller-manager", c.ControllerManagerArgs()); err != nil {
		return err
	}
	return p.startComponent(cp, p.controlPlaneDir(), bins, "kube-scheduler", c.SchedulerArgs())
}

func (p *Plan) componentLog(dir, name string) string { return filepath.Join(dir, name+".log") }

// startComponent starts bin/name with args in ns, logging beside dir.
func (p *Plan) startComponent(ns *kernel.NetNS, dir string, bins Binaries, name string, args []string, prefix ...string) error {
	argv := append(append(prefix, bins.path(name)), args...)
	log := p.componentLog(dir, name)
	if _, err := startProcess(ns, p.Name, log, []string{"PATH=" + kubePath(bins)}, argv...); err != nil {
		return componentError(name, log, err)
	}
	return nil
}

// kubePath is PATH for the lab's Kubernetes processes: bin/ first, so
// containerd finds its shim there.
func kubePath(bins Binaries) string {
	return filepath.Dir(bins.Kdive) + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
}

// waitAPIServer polls /readyz through the control plane's namespace.
func waitAPIServer(ctx context.Context, cp *kernel.NetNS, c *k8s.Cluster, timeout time.Duration) error {
	cs, err := clientFor(cp, c.Kubeconfig(k8s.Admin))
	if err != nil {
		return err
	}
	return poll(ctx, timeout, func() error {
		_, err := cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		return err
	})
}

// adminClient is a clientset for the lab's administrator, dialing the API
// server inside the control plane's namespace: nothing of the lab
// listens in the host's.
func (p *Plan) adminClient(cp *kernel.NetNS) (kubernetes.Interface, error) {
	return clientFor(cp, p.cluster().Kubeconfig(k8s.Admin))
}

// clientFor is a clientset from kubeconfig, dialing in ns (nil: the
// caller's own namespace).
func clientFor(ns *kernel.NetNS, kubeconfig string) (kubernetes.Interface, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, err
	}
	if ns != nil {
		cfg.Dial = ns.DialContext
	}
	cfg.UserAgent = "kdive-lab"
	cfg.QPS, cfg.Burst = 50, 100
	return kubernetes.NewForConfig(cfg)
}

// KubeClient is an admin clientset of a running Kubernetes lab and the
// function that releases it.
func KubeClient(s *State) (kubernetes.Interface, func(), error) {
	p := s.Plan
	if p.Kubernetes == nil {
		return nil, nil, fmt.Errorf("lab %s is not a Kubernetes lab", p.Name)
	}
	cp, err := kernel.OpenNetNS(p.Kubernetes.ControlPlane.NetNS)
	if err != nil {
		return nil, nil, err
	}
	cs, err := p.adminClient(cp)
	if err != nil {
		cp.Close()
		return nil, nil, err
	}
	return cs, func() { cp.Close() }, nil
}

// poll calls cond every 250 ms until it returns nil, timeout passes or
// ctx ends.
func poll(ctx context.Context, timeout time.Duration, cond func() error) error {
	return wait.Until(ctx, timeout, 250*time.Millisecond, cond)
}

// kubeNode is node n as its kubelet and containerd see it.
func (p *Plan) kubeNode(n NodePlan, runc string) *k8s.Node {
	labels := map[string]string{}
	for k, v := range n.Labels {
		labels[k] = v
	}
	return &k8s.Node{
		Name: n.Name, IP: n.IP, Labels: labels, Dir: p.nodeDir(n.Name),
		CgroupRoot: p.cgroupRoot(n.Name), RuncBinary: runc,
	}
}

// startRuntime prepares node n (its directories, cgroups and config
// files), starts the process holding its mount namespace, then containerd
// in it (waiting at least 30s or timeout for its socket), and imports the
// lab's images.
func (p *Plan) startRuntime(ctx context.Context, n NodePlan, bins Binaries, runc string, timeout time.Duration) error {
	kn := p.kubeNode(n, runc)
	c := p.cluster()
	files := map[string][]byte{
		"containerd.toml": k8s.ContainerdConfig(kn),
		"kubelet.yaml":    k8s.KubeletConfig(c, kn),
		"resolv.conf":     []byte(k8s.ResolvConf),
	}
	if err := k8s.WriteFiles(kn.Dir, files); err != nil {
		return err
	}
	for _, m := range k8s.NodeMounts {
		if err := os.MkdirAll(filepath.Join(kn.Dir, "root", m), 0o755); err != nil {
			return err
		}
	}
	if err := p.makeCgroups(n.Name); err != nil {
		return fmt.Errorf("%s: cgroups: %w", n.Name, err)
	}
	ns, err := kernel.OpenNetNS(n.NetNS)
	if err != nil {
		return err
	}
	defer ns.Close()
	holder, err := p.startMountHolder(ctx, ns, kn)
	if err != nil {
		return fmt.Errorf("%s: mount namespace: %w", n.Name, err)
	}
	enter := nodeEnter(holder)
	if err := p.startComponent(ns, kn.Dir, bins, "containerd", []string{"--config", filepath.Join(kn.Dir, "containerd.toml")}, enter...); err != nil {
		return err
	}
	sock := filepath.Join(kn.Dir, "root", k8s.ContainerdSocket)
	if err := poll(ctx, max(timeout, 30*time.Second), func() error { _, err := os.Stat(sock); return err }); err != nil {
		return componentError("containerd on "+n.Name, p.componentLog(kn.Dir, "containerd"), err)
	}
	images, err := imageArchives(bins)
	if err != nil {
		return err
	}
	for _, img := range images {
		argv := append(enter, bins.path("ctr"), "--address", k8s.ContainerdSocket, "-n", "k8s.io", "images", "import", img)
		if out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("%s: import %s: %w: %s", n.Name, img, err, out)
		}
	}
	return nil
}

// imageArchives are the image archives every node imports: kdive's and
// those under bin/images/.
func imageArchives(bins Binaries) ([]string, error) {
	more, err := filepath.Glob(bins.path("images/*.tar"))
	if err != nil {
		return nil, err
	}
	if len(more) == 0 {
		return nil, fmt.Errorf("no images in %s (make kubernetes builds them)", bins.path("images"))
	}
	return append([]string{bins.path("kdive-image.tar")}, more...), nil
}

// nodeEnter is the command prefix that runs a program in the mount
// namespace holder keeps (the caller puts it in the node's network
// namespace). nsenter, not ip netns exec: that one remounts /sys, hiding
// the cgroup v1 hierarchies the kubelet and runc need.
func nodeEnter(holder int) []string {
	return []string{"nsenter", "--mount=/proc/" + strconv.Itoa(holder) + "/ns/mnt", "--"}
}

// mountScript runs in a new mount namespace: it bind-mounts the node's own
// directories over the production paths, says so, and keeps the namespace
// alive.
const mountScript = `set -e
root=$1; shift
for d in "$@"; do mount --bind "$root$d" "$d"; done
touch "$root/../mounted"
exec sleep infinity
`

// startMountHolder starts the process holding node n's mount namespace
// and returns its pid once the mounts are in place.
func (p *Plan) startMountHolder(ctx context.Context, ns *kernel.NetNS, kn *k8s.Node) (int, error) {
	if err := ensureMountpoints(); err != nil {
		return 0, err
	}
	marker := filepath.Join(kn.Dir, "mounted")
	_ = os.Remove(marker)
	argv := append([]string{"unshare", "--mount", "--propagation", "private", "--", "sh", "-c", mountScript, "sh", filepath.Join(kn.Dir, "root")}, k8s.NodeMounts...)
	pid, err := startProcess(ns, p.Name, filepath.Join(kn.Dir, "mounts.log"), nil, argv...)
	if err != nil {
		return 0, err
	}
	err = poll(ctx, 10*time.Second, func() error {
		if !processAlive(pid) {
			return fmt.Errorf("exited; see %s", filepath.Join(kn.Dir, "mounts.log"))
		}
		_, err := os.Stat(marker)
		return err
	})
	return pid, err
}

// startKubelet starts node n's kubelet and waits (at least 90s or
// timeout) until its Node is registered with a pod block from the
// controller-manager, which it records in n.
func (p *Plan) startKubelet(ctx context.Context, cs kubernetes.Interface, n *NodePlan, bins Binaries, timeout time.Duration) error {
	holder, err := p.mountHolder(n.Name)
	if err != nil {
		return err
	}
	ns, err := kernel.OpenNetNS(n.NetNS)
	if err != nil {
		return err
	}
	defer ns.Close()
	kn := p.kubeNode(*n, "")
	if err := p.startComponent(ns, kn.Dir, bins, "kubelet", k8s.KubeletArgs(p.cluster(), kn), nodeEnter(holder)...); err != nil {
		return err
	}
	var block netip.Prefix
	err = poll(ctx, max(timeout, 90*time.Second), func() error {
		node, err := cs.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if node.Spec.PodCIDR == "" {
			return fmt.Errorf("node %s has no pod CIDR yet", n.Name)
		}
		block, err = netip.ParsePrefix(node.Spec.PodCIDR)
		return err
	})
	if err != nil {
		return componentError("kubelet on "+n.Name, p.componentLog(kn.Dir, "kubelet"), err)
	}
	if !p.PodCIDR.Contains(block.Addr()) || block.Bits() != p.BlockSize {
		return fmt.Errorf("node %s got pod CIDR %s, not a /%d of %s", n.Name, block, p.BlockSize, p.PodCIDR)
	}
	n.PodCIDR = block
	return nil
}

// mountHolder is the pid of the process holding node's mount namespace.
func (p *Plan) mountHolder(node string) (int, error) {
	b, err := os.ReadFile(filepath.Join(p.nodeDir(node), "mounts.pid"))
	if err != nil {
		return 0, fmt.Errorf("%s has no mount namespace: %w", node, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || !processAlive(pid) {
		return 0, fmt.Errorf("%s: the process holding its mount namespace is gone", node)
	}
	return pid, nil
}

// NodeCommand is argv run in a Kubernetes lab node's mount namespace (the
// caller enters its network namespace): crictl finds the node's runtime
// at the production path there.
// For any other target, or a plain lab, argv is returned as it is.
func NodeCommand(s *State, node string, argv []string) ([]string, error) {
	p := s.Plan
	if _, ok := p.Node(node); !ok || p.Kubernetes == nil {
		return argv, nil
	}
	holder, err := p.mountHolder(node)
	if err != nil {
		return nil, err
	}
	if len(argv) > 0 && argv[0] == "crictl" {
		argv = append([]string{filepath.Join(s.BinDir, "crictl"), "--runtime-endpoint", "unix://" + k8s.ContainerdSocket}, argv[1:]...)
	}
	return append(nodeEnter(holder), argv...), nil
}

// waitKubeReady waits until every node is Ready, kdive's DaemonSet runs
// on each, and every Deployment is available.
func (p *Plan) waitKubeReady(ctx context.Context, cs kubernetes.Interface, timeout time.Duration) error {
	if timeout < 3*time.Minute {
		timeout = 3 * time.Minute
	}
	return poll(ctx, timeout, func() error {
		nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		for _, n := range nodes.Items {
			if !nodeReady(&n) {
				return fmt.Errorf("node %s is not Ready", n.Name)
			}
		}
		ds, err := cs.AppsV1().DaemonSets(metav1.NamespaceSystem).Get(ctx, "kdive", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if ds.Status.NumberReady != int32(len(p.Nodes)) {
			return fmt.Errorf("kdive is ready on %d of %d nodes", ds.Status.NumberReady, len(p.Nodes))
		}
		deps, err := cs.AppsV1().Deployments(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		for _, d := range deps.Items {
			want := int32(1)
			if d.Spec.Replicas != nil {
				want = *d.Spec.Replicas
			}
			if d.Status.AvailableReplicas != want {
				return fmt.Errorf("deployment %s/%s has %d of %d replicas available", d.Namespace, d.Name, d.Status.AvailableReplicas, want)
			}
		}
		return nil
	})
}

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// kubePodNetNS is the network namespace of a Kubernetes lab's pod
// ("namespace/name", or a bare name unique in the cluster): that of a
// process in the pod's cgroup, which the kubelet names after its UID.
func (p *Plan) kubePodNetNS(target string) (string, error) {
	st := &State{Plan: p}
	cs, done, err := KubeClient(st)
	if err != nil {
		return "", err
	}
	defer done()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var pod *corev1.Pod
	if ns, name, ok := strings.Cut(target, "/"); ok {
		if pod, err = cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{}); err != nil {
			return "", fmt.Errorf("lab %s: pod %s: %w", p.Name, target, err)
		}
	} else {
		pods, err := cs.CoreV1().Pods(metav1.NamespaceAll).List(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + target})
		if err != nil {
			return "", err
		}
		switch len(pods.Items) {
		case 0:
			var nodes []string
			for _, n := range p.Nodes {
				nodes = append(nodes, n.Name)
			}
			return "", fmt.Errorf("lab %s has no node or pod %q (nodes: %s; also router, external, %s)", p.Name, target, strings.Join(nodes, ", "), ControlPlaneName)
		case 1:
			pod = &pods.Items[0]
		default:
			var names []string
			for _, o := range pods.Items {
				names = append(names, o.Namespace+"/"+o.Name)
			}
			return "", fmt.Errorf("pod name %q is ambiguous in lab %s: %s", target, p.Name, strings.Join(names, ", "))
		}
	}
	return PodNetNSPath(st, pod)
}

// podProcess is a process of the pod with uid, found in its cgroup
// (kubepods/.../pod<UID>/) under the lab's cgroups.
func podProcess(lab, uid string) (int, error) {
	base := labCgroup(lab)
	var pid int
	_ = filepath.WalkDir(base, func(path string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() || pid != 0 {
			return nil
		}
		if !strings.Contains(path, "/pod"+uid) {
			return nil
		}
		b, _ := os.ReadFile(filepath.Join(path, "cgroup.procs"))
		if f := strings.Fields(string(b)); len(f) > 0 {
			pid, _ = strconv.Atoi(f[0])
		}
		return nil
	})
	if pid == 0 {
		return 0, fmt.Errorf("no running process (not started yet?)")
	}
	return pid, nil
}
