package diag

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"

	"github.com/containernetworking/cni/libcni"

	"github.com/kdive/kdive/internal/cni"
	"github.com/kdive/kdive/internal/cni/ipam"
	"github.com/kdive/kdive/internal/lab"
	"github.com/kdive/kdive/internal/model"
)

// labTopology reads a lab's plan, status (its pods and services, from
// the lab's store or a Kubernetes lab's API server), IPAM stores and CNI
// caches.
func labTopology(ctx context.Context, name, node string) (*Topology, error) {
	st, err := lab.Load(name)
	if err != nil {
		return nil, err
	}
	p := st.Plan
	if node != "" {
		if _, err := labNode(p, node); err != nil {
			return nil, err
		}
	}
	status := lab.GetStatus(ctx, st)
	topo := &Topology{
		Lab: name, Node: node, ProxyMode: p.Proxy.Mode, Uplink: "eth0", Bridge: cni.DefaultBridge,
		Network: model.PodNetwork{
			Interface: model.Interface(p.PodNetwork.Interface), Encap: model.Encap(p.PodNetwork.Encap),
			EncapPolicy: model.EncapPolicy(p.PodNetwork.EncapPolicy),
		},
		ServiceCIDR: p.ServiceCIDR, LoadBalancerCIDR: p.LoadBalancerCIDR, ExternalCIDR: p.External.CIDR,
		PodsComplete: true,
	}
	for _, pr := range status.Problems {
		topo.Notes = append(topo.Notes, "lab "+name+": "+pr)
	}
	for _, s := range p.Subnets {
		topo.Subnets = append(topo.Subnets, Subnet{Name: s.Name, CIDR: s.CIDR, Gateway: s.Gateway})
	}
	for _, n := range p.Nodes {
		tn := Node{Name: n.Name, IP: n.IP, Subnet: n.CIDR.Masked(), SubnetName: n.Subnet, PodCIDR: n.PodCIDR}
		if tn.IPAM, err = readIPAM(p.IPAMDir(n.Name), n.PodCIDR); err != nil {
			topo.Notes = append(topo.Notes, fmt.Sprintf("node %s: %v", n.Name, err))
		}
		topo.Nodes = append(topo.Nodes, tn)
	}
	cache := map[string]cacheEntry{}
	read := map[string]bool{}
	for _, n := range p.Nodes {
		dir := p.CNICacheDir(n.Name) // one for a whole plain lab
		if read[dir] {
			continue
		}
		read[dir] = true
		c, err := readCNICache(dir)
		if err != nil {
			topo.Notes = append(topo.Notes, err.Error())
		}
		maps.Copy(cache, c)
	}
	for _, sp := range status.Pods {
		if sp.HostNetwork {
			continue // its node's namespace: not on the pod network
		}
		pod := Pod{Namespace: sp.Namespace, Name: sp.Name, Node: sp.Node, NetNS: sp.NetNS}
		if a, err := netip.ParseAddr(sp.IP); err == nil {
			pod.IP = a
		}
		if c, ok := cache[sp.Namespace+"/"+sp.Name]; ok {
			pod.ContainerID, pod.IfName = c.ContainerID, c.IfName
		}
		topo.Pods = append(topo.Pods, pod)
	}
	for _, s := range status.Services {
		svc := Service{Namespace: s.Namespace, Name: s.Name, Type: s.Type}
		svc.ClusterIP, _ = netip.ParseAddr(s.ClusterIP)
		svc.LoadBalancerIP, _ = netip.ParseAddr(s.LoadBalancerIP)
		for _, e := range s.ExternalIPs {
			if a, err := netip.ParseAddr(e); err == nil {
				svc.ExternalIPs = append(svc.ExternalIPs, a)
			}
		}
		for _, pt := range s.Ports {
			svc.Ports = append(svc.Ports, ServicePort{Name: pt.Name, Port: pt.Port, Protocol: pt.Protocol, NodePort: pt.NodePort})
		}
		topo.Services = append(topo.Services, svc)
	}
	return topo, nil
}

// readIPAM reads a node's IPAM store without creating it: a store that
// does not exist yet holds nothing.
func readIPAM(dir string, block netip.Prefix) (*IPAMState, error) {
	st := &IPAMState{Dir: dir}
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	s, err := ipam.New(dir, block)
	if err != nil {
		return nil, err
	}
	if st.Allocations, err = s.List(); err != nil {
		return nil, err
	}
	return st, nil
}

// cacheEntry is one kdive attachment in a libcni cache.
type cacheEntry struct {
	ContainerID, IfName, NetNS string
	Namespace, Name            string
}

// readCNICache reads the attachments of the kdive network that a CNI
// client (containerd, CRI-O, the lab) recorded in its libcni cache, keyed
// by "namespace/name" from their K8S_POD_* CNI_ARGS (by container ID when
// they have none). A missing cache holds nothing.
func readCNICache(dir string) (map[string]cacheEntry, error) {
	atts, err := libcni.NewCNIConfigWithCacheDir(nil, dir, nil).GetCachedAttachments("")
	if err != nil {
		return nil, fmt.Errorf("read CNI cache %s: %w", dir, err)
	}
	out := map[string]cacheEntry{}
	for _, a := range atts {
		if a.Network != cni.NetworkName {
			continue
		}
		e := cacheEntry{ContainerID: a.ContainerID, IfName: a.IfName, NetNS: a.NetNS}
		for _, kv := range a.CniArgs {
			switch kv[0] {
			case "K8S_POD_NAMESPACE":
				e.Namespace = kv[1]
			case "K8S_POD_NAME":
				e.Name = kv[1]
			}
		}
		key := e.Namespace + "/" + e.Name
		if e.Name == "" {
			key = e.ContainerID
		}
		out[key] = e
	}
	return out, nil
}
