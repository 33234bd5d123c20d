package lab

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
	cnitypes100 "github.com/containernetworking/cni/pkg/types/100"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kdive/kdive/internal/cni"
	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/source/labstore"
)

// The lab's container runtime: a pod is a network namespace, attached to
// its node by invoking the CNI plugin through libcni exactly as containerd
// would (network config from the node's conf dir, plugin from CNI_PATH),
// with `kdive echo` running in it on the pod's container ports.

// sandboxID is the pod's stable container (sandbox) id, 64 hex digits like
// containerd's.
func sandboxID(lab string, pod *corev1.Pod) string {
	sum := sha256.Sum256([]byte(lab + "/" + pod.Namespace + "/" + pod.Name))
	return hex.EncodeToString(sum[:])
}

func (p *Plan) runtimeConf(pod *corev1.Pod) *libcni.RuntimeConf {
	id := sandboxID(p.Name, pod)
	return &libcni.RuntimeConf{
		ContainerID: id,
		NetNS:       filepath.Join(kernel.NetNSDir, PodNetNS(p.Name, pod.Namespace, pod.Name)),
		IfName:      "eth0",
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", pod.Namespace},
			{"K8S_POD_NAME", pod.Name},
			{"K8S_POD_INFRA_CONTAINER_ID", id},
			{"K8S_POD_UID", string(pod.UID)},
		},
	}
}

// cniCall runs fn with the node's network config inside the node's
// namespace, where a runtime on that node would run the plugin.
func (p *Plan) cniCall(node string, fn func(c *libcni.CNIConfig, list *libcni.NetworkConfigList) error) error {
	n, ok := p.Node(node)
	if !ok {
		return fmt.Errorf("no node %s in lab %s", node, p.Name)
	}
	list, err := libcni.LoadConfList(p.confDir(node), cni.NetworkName)
	if err != nil {
		return fmt.Errorf("node %s CNI config: %w", node, err)
	}
	c := libcni.NewCNIConfigWithCacheDir([]string{p.cniBinDir()}, p.cniCacheDir(), nil)
	ns, err := kernel.OpenNetNS(n.NetNS)
	if err != nil {
		return err
	}
	defer ns.Close()
	return ns.Do(func() error { return fn(c, list) })
}

// attachPod creates the pod's namespace, attaches it with CNI ADD, starts
// its echo server and records its IP. On error what was done is undone.
func (p *Plan) attachPod(ctx context.Context, bins Binaries, pod *corev1.Pod) (err error) {
	name := PodNetNS(p.Name, pod.Namespace, pod.Name)
	podNS, err := kernel.CreateNetNS(name)
	if err != nil {
		return fmt.Errorf("pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	defer func() {
		podNS.Close()
		if err != nil {
			_ = p.detachPod(ctx, pod)
		}
	}()
	var res *cnitypes100.Result
	err = p.cniCall(pod.Spec.NodeName, func(c *libcni.CNIConfig, list *libcni.NetworkConfigList) error {
		r, err := c.AddNetworkList(ctx, list, p.runtimeConf(pod))
		if err != nil {
			return err
		}
		res, err = cnitypes100.NewResultFromResult(r)
		return err
	})
	if err != nil {
		return fmt.Errorf("CNI ADD pod %s/%s on %s: %w", pod.Namespace, pod.Name, pod.Spec.NodeName, err)
	}
	if len(res.IPs) == 0 {
		return fmt.Errorf("CNI ADD pod %s/%s: the result has no IP", pod.Namespace, pod.Name)
	}
	ip, _ := netip.AddrFromSlice(res.IPs[0].Address.IP)
	ip = ip.Unmap()
	node, _ := p.Node(pod.Spec.NodeName)
	listens := podListens(pod)
	args := []string{bins.Kdive, "echo"}
	for _, l := range listens {
		args = append(args, "--listen="+l)
	}
	pid, err := startProcess(podNS, p.Name, p.podLog(pod), []string{
		"POD_NAME=" + pod.Name, "POD_NAMESPACE=" + pod.Namespace, "NODE_NAME=" + pod.Spec.NodeName, "POD_IP=" + ip.String(),
	}, args...)
	if err == nil {
		err = waitListening(ctx, pid, listens, 10*time.Second)
	}
	if err != nil {
		return fmt.Errorf("pod %s/%s: start echo: %w", pod.Namespace, pod.Name, err)
	}
	return p.updateStore(ctx, func(s *labstore.Snapshot) error {
		for i := range s.Pods {
			sp := &s.Pods[i]
			if sp.Namespace == pod.Namespace && sp.Name == pod.Name {
				now := metav1.NewTime(time.Now())
				sp.Status = corev1.PodStatus{
					Phase: corev1.PodRunning, HostIP: node.IP.String(), HostIPs: []corev1.HostIP{{IP: node.IP.String()}},
					PodIP: ip.String(), PodIPs: []corev1.PodIP{{IP: ip.String()}}, StartTime: &now,
					Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now}},
				}
				return nil
			}
		}
		return fmt.Errorf("pod %s/%s is not in the lab's store", pod.Namespace, pod.Name)
	})
}

func (p *Plan) podLog(pod *corev1.Pod) string {
	return filepath.Join(p.podsDir(), pod.Namespace+"_"+pod.Name+".log")
}

// podListens turns the pod's container ports into echo listeners
// ("tcp:8080"); a pod without ports still answers HTTP on 8080.
func podListens(pod *corev1.Pod) []string {
	var out []string
	for _, c := range pod.Spec.Containers {
		for _, cp := range c.Ports {
			proto := strings.ToLower(string(cp.Protocol))
			if proto == "" {
				proto = "tcp"
			}
			if proto != "tcp" && proto != "udp" {
				continue
			}
			l := proto + ":" + strconv.Itoa(int(cp.ContainerPort))
			if !slices.Contains(out, l) {
				out = append(out, l)
			}
		}
	}
	if len(out) == 0 {
		out = []string{"tcp:8080"}
	}
	return out
}

// detachPod stops the pod's processes, detaches it with CNI DEL (which must
// succeed even when parts are already gone) and removes its namespace.
func (p *Plan) detachPod(ctx context.Context, pod *corev1.Pod) error {
	name := PodNetNS(p.Name, pod.Namespace, pod.Name)
	path := filepath.Join(kernel.NetNSDir, name)
	var errs []error
	if _, err := os.Stat(path); err == nil {
		if err := kernel.KillNetNSProcesses(path, 2*time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	if _, err := os.Stat(filepath.Join(p.confDir(pod.Spec.NodeName), cni.ConfListFile)); err == nil {
		err := p.cniCall(pod.Spec.NodeName, func(c *libcni.CNIConfig, list *libcni.NetworkConfigList) error {
			return c.DelNetworkList(ctx, list, p.runtimeConf(pod))
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("CNI DEL pod %s/%s: %w", pod.Namespace, pod.Name, err))
		}
	}
	if err := kernel.DeleteNetNS(name); err != nil {
		errs = append(errs, err)
	}
	for _, f := range []string{p.podLog(pod), strings.TrimSuffix(p.podLog(pod), ".log") + ".pid"} {
		_ = os.Remove(f)
	}
	return errors.Join(errs...)
}
