package lab

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/source/labstore"
)

// Status is what `kdive lab status -o json` prints; scripts depend on its
// field names.
type Status struct {
	Name        string          `json:"name"`
	Preset      string          `json:"preset"`
	State       string          `json:"state"` // running | degraded
	Problems    []string        `json:"problems,omitempty"`
	Created     time.Time       `json:"created"`
	PodCIDR     string          `json:"podCIDR"`
	ServiceCIDR string          `json:"serviceCIDR"`
	PodNetwork  PodNetwork      `json:"podNetwork"`
	Proxy       Proxy           `json:"proxy"`
	Nodes       []NodeStatus    `json:"nodes"`
	External    HostStatus      `json:"external"`
	Router      RouterStatus    `json:"router"`
	Pods        []PodStatus     `json:"pods"`
	Services    []ServiceStatus `json:"services"`

	// ControlPlane is a Kubernetes lab's control-plane host.
	ControlPlane *HostStatus `json:"controlPlane,omitempty"`
}

// NodeStatus is one node.
type NodeStatus struct {
	Name    string `json:"name"`
	Subnet  string `json:"subnet"`
	IP      string `json:"ip"`
	PodCIDR string `json:"podCIDR"`
	NetNS   string `json:"netns"`
}

// HostStatus is the external client.
type HostStatus struct {
	IP    string `json:"ip"`
	NetNS string `json:"netns"`
}

// RouterStatus is the router and what its VPC check did.
type RouterStatus struct {
	NetNS     string  `json:"netns"`
	Forwarded Counter `json:"forwarded"`
	Dropped   Counter `json:"dropped"`
}

// PodStatus is one pod; IP is empty until the pod is attached.
type PodStatus struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Node      string `json:"node"`
	IP        string `json:"ip"`
	// HostNetwork pods (a Kubernetes lab's kdive agents) are in their
	// node's network namespace and have its address.
	HostNetwork bool `json:"hostNetwork,omitempty"`
	// NetNS is the file of the pod's network namespace (PodNetNSPath);
	// empty while a Kubernetes lab's pod has no process.
	NetNS string `json:"netns,omitempty"`
}

// ServiceStatus is one service.
type ServiceStatus struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Type      string `json:"type"`
	ClusterIP string `json:"clusterIP"`
	// ExternalIPs and LoadBalancerIP are the addresses the router
	// forwards to the nodes for this service.
	ExternalIPs         []string     `json:"externalIPs,omitempty"`
	LoadBalancerIP      string       `json:"loadBalancerIP,omitempty"`
	HealthCheckNodePort int32        `json:"healthCheckNodePort,omitempty"`
	Ports               []PortStatus `json:"ports"`
}

// PortStatus is one service port.
type PortStatus struct {
	Name       string `json:"name"`
	Port       int32  `json:"port"`
	Protocol   string `json:"protocol"`
	NodePort   int32  `json:"nodePort,omitempty"`
	TargetPort string `json:"targetPort,omitempty"`
}

// GetStatus reports a lab as recorded and as the kernel has it now: a
// missing namespace makes the lab degraded, as do, in a Kubernetes lab, an
// API server that does not answer and a node that is not Ready. Its pods
// and services are Snapshot's.
func GetStatus(ctx context.Context, s *State) *Status {
	p := s.Plan
	st := &Status{
		Name: p.Name, Preset: p.Preset, State: "running", Created: s.Created,
		PodCIDR: p.PodCIDR.String(), ServiceCIDR: p.ServiceCIDR.String(),
		PodNetwork: p.PodNetwork, Proxy: p.Proxy,
		External: HostStatus{IP: p.External.IP.String(), NetNS: p.External.NetNS},
		Router:   RouterStatus{NetNS: p.Router.NetNS},
		Nodes:    []NodeStatus{}, Pods: []PodStatus{}, Services: []ServiceStatus{},
	}
	present, _ := kernel.ListNetNS(NetNSPrefix(p.Name))
	want := []string{p.Router.NetNS, p.External.NetNS}
	for _, n := range p.Nodes {
		want = append(want, n.NetNS)
		st.Nodes = append(st.Nodes, NodeStatus{Name: n.Name, Subnet: n.Subnet, IP: n.IP.String(), PodCIDR: n.PodCIDR.String(), NetNS: n.NetNS})
	}
	if k := p.Kubernetes; k != nil {
		want = append(want, k.ControlPlane.NetNS)
		st.ControlPlane = &HostStatus{IP: k.ControlPlane.IP.String(), NetNS: k.ControlPlane.NetNS}
	}
	for _, w := range want {
		if !slices.Contains(present, w) {
			st.Problems = append(st.Problems, "network namespace "+w+" is missing")
		}
	}
	if fwd, drop, err := RouterCounters(ctx, p); err != nil {
		st.Problems = append(st.Problems, "router counters: "+err.Error())
	} else {
		st.Router.Forwarded, st.Router.Dropped = fwd, drop
	}
	snap, err := Snapshot(ctx, s)
	switch {
	case err != nil && p.Kubernetes == nil:
		st.Problems = append(st.Problems, err.Error())
		snap = &labstore.Snapshot{Pods: p.Objects.Pods, Services: p.Objects.Services}
	case err != nil:
		st.Problems = append(st.Problems, err.Error())
		snap = &labstore.Snapshot{}
	case p.Kubernetes != nil:
		st.Problems = append(st.Problems, notReady(p, snap.Nodes)...)
	}
	if len(st.Problems) > 0 {
		st.State = "degraded"
	}
	for i := range snap.Pods {
		pod := &snap.Pods[i]
		ps := PodStatus{Namespace: pod.Namespace, Name: pod.Name, Node: pod.Spec.NodeName, IP: pod.Status.PodIP, HostNetwork: pod.Spec.HostNetwork}
		ps.NetNS, _ = PodNetNSPath(s, pod)
		st.Pods = append(st.Pods, ps)
	}
	for _, svc := range snap.Services {
		ss := ServiceStatus{
			Namespace: svc.Namespace, Name: svc.Name, Type: string(svc.Spec.Type), ClusterIP: svc.Spec.ClusterIP,
			ExternalIPs: svc.Spec.ExternalIPs, HealthCheckNodePort: svc.Spec.HealthCheckNodePort, Ports: []PortStatus{},
		}
		if ing := svc.Status.LoadBalancer.Ingress; len(ing) > 0 {
			ss.LoadBalancerIP = ing[0].IP
		}
		for _, pt := range svc.Spec.Ports {
			ps := PortStatus{Name: pt.Name, Port: pt.Port, Protocol: string(pt.Protocol), NodePort: pt.NodePort}
			if pt.TargetPort.String() != "0" {
				ps.TargetPort = pt.TargetPort.String()
			}
			ss.Ports = append(ss.Ports, ps)
		}
		st.Services = append(st.Services, ss)
	}
	return st
}

// notReady says which of the lab's nodes have no Node object or one that
// is not Ready.
func notReady(p *Plan, nodes []corev1.Node) []string {
	var out []string
	for _, n := range p.Nodes {
		i := slices.IndexFunc(nodes, func(o corev1.Node) bool { return o.Name == n.Name })
		switch {
		case i < 0:
			out = append(out, "node "+n.Name+" is not registered")
		case !nodeReady(&nodes[i]):
			out = append(out, "node "+n.Name+" is not Ready")
		}
	}
	return out
}

// WriteText prints a status for people.
func (st *Status) WriteText(w io.Writer) error {
	preset := st.Preset
	if preset == "" {
		preset = "(lab file)"
	}
	fmt.Fprintf(w, "Lab %s: %s, preset %s, created %s\n", st.Name, st.State, preset, st.Created.Format(time.RFC3339))
	for _, p := range st.Problems {
		fmt.Fprintf(w, "  problem: %s\n", p)
	}
	fmt.Fprintf(w, "Pod network: %s veths, encap %s (%s); proxy %s", st.PodNetwork.Interface, st.PodNetwork.Encap, st.PodNetwork.EncapPolicy, st.Proxy.Mode)
	if st.Proxy.IPVSScheduler != "" {
		fmt.Fprintf(w, " (scheduler %s)", st.Proxy.IPVSScheduler)
	}
	fmt.Fprintf(w, "\nPod CIDR %s, service CIDR %s\n\n", st.PodCIDR, st.ServiceCIDR)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tSUBNET\tIP\tPOD BLOCK\tNETNS")
	for _, n := range st.Nodes {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", n.Name, n.Subnet, n.IP, n.PodCIDR, n.NetNS)
	}
	fmt.Fprintf(tw, "external\t-\t%s\t-\t%s\n", st.External.IP, st.External.NetNS)
	fmt.Fprintf(tw, "router\t-\t-\t-\t%s\n", st.Router.NetNS)
	if cp := st.ControlPlane; cp != nil {
		fmt.Fprintf(tw, "%s\t-\t%s\t-\t%s\n", ControlPlaneName, cp.IP, cp.NetNS)
	}
	tw.Flush()
	fmt.Fprintf(w, "\nRouter: forwarded %d packets, dropped %d (VPC source/destination check)\n", st.Router.Forwarded.Packets, st.Router.Dropped.Packets)
	if len(st.Services) > 0 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SERVICE\tTYPE\tCLUSTER-IP\tEXTERNAL-IP\tPORTS")
		for _, s := range st.Services {
			var ports []string
			for _, p := range s.Ports {
				pt := fmt.Sprintf("%d/%s", p.Port, p.Protocol)
				if p.NodePort != 0 {
					pt = fmt.Sprintf("%d:%d/%s", p.Port, p.NodePort, p.Protocol)
				}
				ports = append(ports, pt)
			}
			external := append([]string{}, s.ExternalIPs...)
			if s.LoadBalancerIP != "" {
				external = append(external, s.LoadBalancerIP)
			}
			if len(external) == 0 {
				external = []string{"<none>"}
			}
			fmt.Fprintf(tw, "%s/%s\t%s\t%s\t%s\t%s\n", s.Namespace, s.Name, s.Type, s.ClusterIP, strings.Join(external, ","), strings.Join(ports, ","))
		}
		tw.Flush()
	}
	if len(st.Pods) > 0 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "POD\tNODE\tIP")
		for _, p := range st.Pods {
			ip := p.IP
			if ip == "" {
				ip = "<not attached>"
			}
			fmt.Fprintf(tw, "%s/%s\t%s\t%s\n", p.Namespace, p.Name, p.Node, ip)
		}
		tw.Flush()
	}
	return nil
}
