package lab

import (
	"fmt"

	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/kdive/kdive/internal/lab/k8s"
)

// DefaultKubernetesVersion is the version make kubernetes builds.
const DefaultKubernetesVersion = "v1.37.2"

// ControlPlaneName is the host running a Kubernetes lab's control plane.
const ControlPlaneName = "control-plane"

// KubernetesPlan is the part of a Kubernetes lab's plan beyond the
// underlay and the nodes.
//
// The control plane (etcd, kube-apiserver, kube-controller-manager,
// kube-scheduler) runs on a host of its own, as kind's control-plane node:
// a namespace on the first subnet at its last address, which the router
// treats as a lab host. It is not a Node (no kubelet): the lab's nodes stay
// the lab file's, as in the reference clusters, and the control plane's
// CPU and memory are not counted against a node that runs pods.
type KubernetesPlan struct {
	Version      string   `json:"version"`
	ControlPlane HostPlan `json:"controlPlane"`
}

func (p *Plan) planKubernetes(s *Kubernetes, fp *field.Path) field.ErrorList {
	var errs field.ErrorList
	k := p.Kubernetes
	if k.Version == "" {
		k.Version = DefaultKubernetesVersion
	}
	if k.Version != DefaultKubernetesVersion {
		errs = append(errs, field.NotSupported(fp.Child("version"), s.Version, []string{DefaultKubernetesVersion}))
	}
	if len(p.Subnets) == 0 {
		return errs
	}
	sn := p.Subnets[0]
	ip := lastAddr(sn.CIDR).Prev()
	for i, n := range p.Nodes {
		if n.Name == ControlPlaneName {
			errs = append(errs, field.Invalid(field.NewPath("spec", "nodes").Index(i).Child("name"), n.Name,
				"is reserved for the Kubernetes lab's control plane"))
		}
		if n.IP == ip {
			errs = append(errs, field.Invalid(field.NewPath("spec", "nodes").Index(i).Child("ip"), n.IP.String(),
				fmt.Sprintf("is the Kubernetes lab's control-plane address (subnet %s's last)", sn.Name)))
		}
	}
	k.ControlPlane = HostPlan{
		Name: ControlPlaneName, NetNS: NetNSPrefix(p.Name) + ControlPlaneName,
		CIDR: sn.CIDR, IP: ip, MAC: macFor(ip), Gateway: sn.Gateway, RouterPort: "cp0",
	}
	return errs
}

// cluster is what the Kubernetes components need to know of the lab.
func (p *Plan) cluster() *k8s.Cluster {
	c := &k8s.Cluster{
		Lab: p.Name, Dir: p.controlPlaneDir(),
		APIServerIP: p.Kubernetes.ControlPlane.IP,
		PodCIDR:     p.PodCIDR, BlockSize: p.BlockSize, ServiceCIDR: p.ServiceCIDR,
	}
	for _, n := range p.Nodes {
		c.Nodes = append(c.Nodes, n.Name)
	}
	return c
}

func (p *Plan) controlPlaneDir() string { return p.nodeDir(ControlPlaneName) }

// hosts are every host namespace on the underlay: the nodes, the external
// client and, in a Kubernetes lab, the control plane.
func (p *Plan) hosts() []HostPlan {
	out := []HostPlan{p.External}
	for _, n := range p.Nodes {
		out = append(out, n.HostPlan)
	}
	if p.Kubernetes != nil {
		out = append(out, p.Kubernetes.ControlPlane)
	}
	return out
}

// APIServer is the Kubernetes lab's API server URL, "" for a plain lab.
func (p *Plan) APIServer() string {
	if p.Kubernetes == nil {
		return ""
	}
	return p.cluster().APIServerURL()
}
