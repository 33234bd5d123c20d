package diag

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"

	"github.com/containernetworking/cni/libcni"

	"github.com/kdive/kdive/internal/cni"
	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/podnet"
)

// Where a real node keeps its CNI state.
const (
	DefaultCNIConfDir  = "/etc/cni/net.d"
	DefaultCNICacheDir = "/var/lib/cni" // libcni.CacheDir
)

// nodeConf is the part of the kdive conflist the diagnostics read.
type nodeConf struct {
	Mode    model.Interface `json:"mode"`
	PodCIDR string          `json:"podCIDR"`
	DataDir string          `json:"dataDir"`
	Bridge  string          `json:"bridge"`
}

// localTopology is what this machine tells about itself without the API
// server: the node's address (from its kernel state), its pod block and
// mode (the kdive conflist), its IPAM store and the pods a runtime
// attached (its libcni cache, which records the pods' names).
func (t Target) localTopology(ks *KernelState) (*Topology, error) {
	name := t.Node
	if name == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("node name: %w", err)
		}
		name = h
	}
	topo := &Topology{Node: name, Bridge: cni.DefaultBridge}
	topo.Notes = append(topo.Notes, "this node only: other nodes' names and the pods' API objects need the API server, which kdive show does not ask")
	node := Node{Name: name}
	if ip, subnet, ok := localAddr(ks); ok {
		node.IP, node.Subnet = ip, subnet
	} else {
		topo.Notes = append(topo.Notes, "could not tell this node's underlay address (no kdive tunnel and no default route)")
	}
	confDir := cmp.Or(t.CNIConfDir, DefaultCNIConfDir)
	conf, err := readNodeConf(confDir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		topo.Notes = append(topo.Notes, fmt.Sprintf("no kdive CNI config (%s): this node's pod block and IPAM store are unknown", filepath.Join(confDir, cni.ConfListFile)))
	case err != nil:
		topo.Notes = append(topo.Notes, err.Error())
	default:
		topo.Network.Interface = conf.Mode
		if conf.Bridge != "" {
			topo.Bridge = conf.Bridge
		}
		if b, err := netip.ParsePrefix(conf.PodCIDR); err == nil {
			node.PodCIDR = b.Masked()
			if node.IPAM, err = readIPAM(cmp.Or(conf.DataDir, cni.DefaultDataDir), node.PodCIDR); err != nil {
				topo.Notes = append(topo.Notes, err.Error())
			}
		}
	}
	topo.Nodes = []Node{node}
	cache, err := readCNICache(cmp.Or(t.CNICacheDir, DefaultCNICacheDir))
	if err != nil {
		topo.Notes = append(topo.Notes, err.Error())
	}
	for _, c := range cache {
		pod := Pod{Namespace: c.Namespace, Name: c.Name, Node: name, NetNS: c.NetNS, ContainerID: c.ContainerID, IfName: c.IfName}
		if node.IPAM != nil {
			for _, al := range node.IPAM.Allocations {
				if al.Attachment.ContainerID == c.ContainerID && al.Attachment.IfName == c.IfName {
					pod.IP = al.Addr
				}
			}
		}
		topo.Pods = append(topo.Pods, pod)
	}
	slices.SortFunc(topo.Pods, func(a, b Pod) int { return a.IP.Compare(b.IP) })
	return topo, nil
}

// readNodeConf reads the kdive plugin's entry of the node's conflist.
func readNodeConf(dir string) (nodeConf, error) {
	path := filepath.Join(dir, cni.ConfListFile)
	if _, err := os.Stat(path); err != nil {
		return nodeConf{}, err
	}
	list, err := libcni.ConfListFromFile(path)
	if err != nil {
		return nodeConf{}, fmt.Errorf("read %s: %w", path, err)
	}
	for _, pl := range list.Plugins {
		if pl.Network.Type != cni.PluginType {
			continue
		}
		var c nodeConf
		if err := json.Unmarshal(pl.Bytes, &c); err != nil {
			return nodeConf{}, fmt.Errorf("read %s: %w", path, err)
		}
		return c, nil
	}
	return nodeConf{}, fmt.Errorf("read %s: no plugin of type %q", path, cni.PluginType)
}

// localAddr finds this node's underlay address: the local end of kdive's
// VXLAN device or a per-peer tunnel, else the first address of the default
// route's device.
func localAddr(ks *KernelState) (netip.Addr, netip.Prefix, bool) {
	var ip netip.Addr
	for _, t := range ks.Tunnels {
		if (t.Name == podnet.VXLANDevice || t.Alias == podnet.LinkAlias) && t.Local.IsValid() {
			ip = t.Local
			break
		}
	}
	if !ip.IsValid() {
		for _, r := range ks.Routes {
			if r.Dst.IsValid() || r.Dev == "" {
				continue
			}
			if l, ok := ks.link(r.Dev); ok {
				for _, a := range l.Addrs {
					if a.Addr().Is4() {
						return a.Addr(), a.Masked(), true
					}
				}
			}
		}
		return netip.Addr{}, netip.Prefix{}, false
	}
	for _, l := range ks.Links {
		for _, a := range l.Addrs {
			if a.Addr() == ip {
				return ip, a.Masked(), true
			}
		}
	}
	return ip, netip.Prefix{}, true
}
