package lab

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kdive/kdive/internal/cni"
	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/source/labstore"
)

// The lab's control plane: what an API server, the node IPAM controller
// and a scheduler would do, done by the lab commands themselves, writing
// the lab's store, which every node's agent reads through its informers.

// nodeObject is the Node a lab node registers, as a kubelet would, with the
// pod block the node IPAM controller would give it.
func (p *Plan) nodeObject(n NodePlan) corev1.Node {
	return corev1.Node{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Node"},
		ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: n.NodeLabels()},
		Spec:       corev1.NodeSpec{PodCIDR: n.PodCIDR.String(), PodCIDRs: []string{n.PodCIDR.String()}},
		Status: corev1.NodeStatus{
			Addresses: []corev1.NodeAddress{
				{Type: corev1.NodeInternalIP, Address: n.IP.String()},
				{Type: corev1.NodeHostName, Address: n.Name},
			},
			Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}},
		},
	}
}

// updateStore changes the lab's store as the control plane would: fn's
// change, then the EndpointSlices derived again, then the router pointed at
// the nodes for the services' LoadBalancer and external IPs.
func (p *Plan) updateStore(ctx context.Context, fn func(*labstore.Snapshot) error) error {
	var snap labstore.Snapshot
	err := labstore.Open(p.storeDir()).Update(func(s *labstore.Snapshot) error {
		if err := fn(s); err != nil {
			return err
		}
		p.reconcileSlices(s)
		snap = *s
		return nil
	})
	if err != nil {
		return err
	}
	return p.syncRouter(ctx, &snap)
}

// seedStore writes the lab's Nodes, Services and (not yet running) Pods.
func (p *Plan) seedStore(ctx context.Context) error {
	return p.updateStore(ctx, func(s *labstore.Snapshot) error {
		for _, n := range p.Nodes {
			s.Nodes = append(s.Nodes, p.nodeObject(n))
		}
		s.Services = append(s.Services, p.Objects.Services...)
		for _, pod := range p.Objects.Pods {
			pod.Status = corev1.PodStatus{Phase: corev1.PodPending}
			s.Pods = append(s.Pods, pod)
		}
		return nil
	})
}

// installCNI puts the plugin on the lab's CNI_PATH under its type name,
// "kdive", as a node's /opt/cni/bin would have it.
func (p *Plan) installCNI(bins Binaries) error {
	if err := os.MkdirAll(p.cniBinDir(), 0o755); err != nil {
		return err
	}
	link := filepath.Join(p.cniBinDir(), cni.PluginType)
	_ = os.Remove(link)
	if err := os.Symlink(bins.KdiveCNI, link); err != nil {
		return fmt.Errorf("install CNI plugin: %w", err)
	}
	return nil
}

// startAgents starts one `kdive agent` per node, inside the node's
// namespace, reading the lab's store, and waits until each has written its
// node's CNI network config: from then on pods can be attached.
func (p *Plan) startAgents(ctx context.Context, bins Binaries, timeout time.Duration) error {
	for _, n := range p.Nodes {
		if _, err := p.startAgent(n, bins, p.Proxy.Mode); err != nil {
			return err
		}
	}
	deadline := time.Now().Add(timeout)
	for _, n := range p.Nodes {
		conf := filepath.Join(p.confDir(n.Name), cni.ConfListFile)
		for {
			if _, err := os.Stat(conf); err == nil {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("agent of %s wrote no %s within %s; see %s", n.Name, cni.ConfListFile, timeout,
					filepath.Join(p.nodeDir(n.Name), "agent.log"))
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	return nil
}

// startAgent starts node n's agent in proxy mode mode and returns its pid.
func (p *Plan) startAgent(n NodePlan, bins Binaries, mode string) (int, error) {
	ns, err := kernel.OpenNetNS(n.NetNS)
	if err != nil {
		return 0, err
	}
	defer ns.Close()
	pid, err := startProcess(ns, p.Name, filepath.Join(p.nodeDir(n.Name), "agent.log"), []string{"NODE_NAME=" + n.Name},
		bins.Kdive, "agent",
		"--node-name", n.Name,
		"--lab-store", p.storeDir(),
		"--cni-conf-dir", p.confDir(n.Name),
		"--cni-data-dir", p.ipamDir(n.Name),
		"--interface", p.PodNetwork.Interface,
		"--encap", p.PodNetwork.Encap,
		"--encap-policy", p.PodNetwork.EncapPolicy,
		"--proxy-mode", mode,
		"--cluster-cidr", p.PodCIDR.String(),
		"--ipvs-scheduler", p.Proxy.IPVSScheduler,
	)
	if err != nil {
		return 0, fmt.Errorf("start agent of %s: %w", n.Name, err)
	}
	return pid, nil
}

// startAPIServer runs the stand-in the kubernetes service points at: an
// echo server on the first node's address, port APIServerPort. (The lab's
// real API is its store; this gives default/kubernetes a live endpoint.)
func (p *Plan) startAPIServer(ctx context.Context, bins Binaries) error {
	n := p.Nodes[0]
	ns, err := kernel.OpenNetNS(n.NetNS)
	if err != nil {
		return err
	}
	defer ns.Close()
	pid, err := startProcess(ns, p.Name, filepath.Join(p.nodeDir(n.Name), "apiserver.log"),
		[]string{"POD_NAME=kube-apiserver", "POD_NAMESPACE=kube-system", "NODE_NAME=" + n.Name, "POD_IP=" + n.IP.String()},
		bins.Kdive, "echo", fmt.Sprintf("--listen=tcp:%s:%d", n.IP, APIServerPort))
	if err == nil {
		err = waitListening(ctx, pid, []string{fmt.Sprintf("tcp:%d", APIServerPort)}, 10*time.Second)
	}
	if err != nil {
		return fmt.Errorf("start the API server stand-in on %s: %w", n.Name, err)
	}
	return nil
}
