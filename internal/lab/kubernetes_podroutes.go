package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/kdive/kdive/internal/fileutil"
	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/nft"
	"github.com/kdive/kdive/internal/lab/k8s"
)

// Pod blocks in the lab's cloud. Once the controller-manager has handed
// out the nodes' pod blocks, the router gets a route to each, as a cloud's
// route controller gives its VPC route table one, and the control plane a
// route to the cluster's pod range through the router: the API server
// reaches pods (its pods/proxy and services/proxy, which the e2e suite
// uses), as on a cluster whose control plane is in the VPC. The VPC check
// lets only the control plane's traffic to pods and the pods' answers to it
// through, so pod traffic between nodes still crosses subnets only as
// kdive's pod network carries it.
//
// With podNetwork.interface none, the pod network is the cloud's: the CNI
// reference plugins attach pods to a bridge (cni0) on each node, host-local
// hands out the node's block, portmap serves hostPorts, and pods reach
// other nodes' pods directly within a subnet and through the router's
// routes across subnets (kubenet on a cloud). kdive is then only the
// service proxy, as it would be beside any CNI.

// InterfaceNone is the lab's podNetwork.interface for a Kubernetes lab
// whose pod network is the cloud's (see cloudPodNetwork).
const InterfaceNone = "none"

// cloudPodNetwork says whether the lab's pod network is the cloud's rather
// than kdive's.
func (p *Plan) cloudPodNetwork() bool {
	return p.Kubernetes != nil && p.PodNetwork.Interface == InterfaceNone
}

// referencePlugins are the CNI plugins a cloud pod network's nodes run,
// built by make kubernetes into bin/cni.
var referencePlugins = []string{"bridge", "host-local", "portmap", "loopback"}

// referenceConfList is node n's CNI config on a cloud pod network.
func (p *Plan) referenceConfList(n NodePlan) ([]byte, error) {
	conf := map[string]any{
		"cniVersion": "1.0.0",
		"name":       "lab-cloud",
		"plugins": []any{
			map[string]any{
				"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true, "mtu": p.MTU,
				"ipam": map[string]any{
					"type":   "host-local",
					"ranges": [][]map[string]string{{{"subnet": n.PodCIDR.String()}}},
					"routes": []map[string]string{{"dst": "0.0.0.0/0"}},
				},
			},
			map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}, "snat": true},
		},
	}
	return json.MarshalIndent(conf, "", "  ")
}

// installReferenceCNI puts the reference plugins and node n's config where
// its containerd looks for them.
func (p *Plan) installReferenceCNI(n NodePlan, bins Binaries) error {
	root := filepath.Join(p.nodeDir(n.Name), "root")
	for _, name := range referencePlugins {
		b, err := os.ReadFile(bins.path(filepath.Join("cni", name)))
		if err != nil {
			return fmt.Errorf("%s: CNI plugin %s (make kubernetes builds bin/cni): %w", n.Name, name, err)
		}
		if err := fileutil.WriteAtomic(filepath.Join(root, k8s.CNIBinDir, name), b, 0o755); err != nil {
			return err
		}
	}
	conf, err := p.referenceConfList(n)
	if err != nil {
		return err
	}
	return fileutil.WriteAtomic(filepath.Join(root, k8s.CNIConfDir, "10-lab-cloud.conflist"), conf, 0o644)
}

// routePodBlocks routes the nodes' pod blocks (known once every kubelet has
// registered) through the router and from the control plane, and on a
// cloud pod network from each node to the others'.
func (p *Plan) routePodBlocks(ctx context.Context) error {
	router, err := kernel.OpenNetNS(p.Router.NetNS)
	if err != nil {
		return err
	}
	defer router.Close()
	tx := nft.NewTransaction(routerTable)
	for _, n := range p.Nodes {
		if err := router.ReplaceRoute(kernel.Route{Dst: n.PodCIDR, Gateway: n.IP, Dev: p.bridgeOf(n.Subnet)}); err != nil {
			return err
		}
		tx.Add(&nft.Element{Set: "pod_blocks", Key: []string{n.PodCIDR.String()}})
	}
	for _, n := range p.Nodes {
		tx.Add(&nft.Element{Set: "pod_sources", Key: []string{n.MAC, n.PodCIDR.String()}})
	}
	if err := nft.New(router).Run(ctx, tx); err != nil {
		return fmt.Errorf("router: pod blocks: %w", err)
	}
	cp := p.Kubernetes.ControlPlane
	if err := addRoutes(cp, kernel.Route{Dst: p.PodCIDR, Gateway: cp.Gateway, Dev: "eth0"}); err != nil {
		return err
	}
	if !p.cloudPodNetwork() {
		return nil
	}
	for _, n := range p.Nodes {
		var routes []kernel.Route
		for _, m := range p.Nodes {
			if m.Name == n.Name {
				continue
			}
			via := n.Gateway
			if m.CIDR == n.CIDR {
				via = m.IP // same subnet: straight to the node
			}
			routes = append(routes, kernel.Route{Dst: m.PodCIDR, Gateway: via, Dev: "eth0"})
		}
		if err := addRoutes(n.HostPlan, routes...); err != nil {
			return err
		}
	}
	return nil
}

func addRoutes(h HostPlan, routes ...kernel.Route) error {
	ns, err := kernel.OpenNetNS(h.NetNS)
	if err != nil {
		return err
	}
	defer ns.Close()
	for _, r := range routes {
		if err := ns.ReplaceRoute(r); err != nil {
			return fmt.Errorf("%s: %w", h.Name, err)
		}
	}
	return nil
}
