package diag

import (
	"context"
	"fmt"
	"strings"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/lab"
)

// Target is the node a diagnostic looks at: a node of a lab on this
// machine, or this machine itself (the process's own network namespace,
// as on a real node where kdive runs in the host's).
type Target struct {
	// Lab is the lab's name; empty means this machine.
	Lab string
	// Node is the lab node. On this machine it only names the node (the
	// hostname when empty).
	Node string
	// CNIConfDir and CNICacheDir locate this machine's CNI config
	// (default /etc/cni/net.d) and the runtime's libcni cache (default
	// /var/lib/cni); unused in a lab.
	CNIConfDir  string
	CNICacheDir string
}

// LocalNetNS is this machine's namespace as the diagnostics open it.
const LocalNetNS = "/proc/self/ns/net"

func (t Target) String() string {
	if t.Lab == "" {
		if t.Node != "" {
			return "this node (" + t.Node + ")"
		}
		return "this node"
	}
	if t.Node == "" {
		return "lab " + t.Lab
	}
	return "node " + t.Node + " of lab " + t.Lab
}

// OpenNetNS opens the node's network namespace; close it when done. A lab
// target needs a Node.
func (t Target) OpenNetNS() (*kernel.NetNS, error) {
	if t.Lab == "" {
		return kernel.OpenNetNS(LocalNetNS)
	}
	st, err := lab.Load(t.Lab)
	if err != nil {
		return nil, err
	}
	n, err := labNode(st.Plan, t.Node)
	if err != nil {
		return nil, err
	}
	return kernel.OpenNetNS(n.NetNS)
}

// Topology reports what is known of the cluster around the node: in a lab
// its plan and status, with every node's IPAM store; on this machine the
// CNI config, the IPAM store, the runtime's CNI cache and the node's own
// addresses (read from its namespace). A lab target without a Node gets
// the lab's topology with Topology.Node empty.
func (t Target) Topology(ctx context.Context) (*Topology, error) {
	if t.Lab != "" {
		return labTopology(ctx, t.Lab, t.Node)
	}
	ns, err := t.OpenNetNS()
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	ks, err := ReadKernel(ns)
	if err != nil {
		return nil, err
	}
	return t.localTopology(ks)
}

// Collect reads the node's kernel state and its topology.
func Collect(ctx context.Context, t Target) (*Topology, *KernelState, error) {
	ns, err := t.OpenNetNS()
	if err != nil {
		return nil, nil, err
	}
	defer ns.Close()
	ks, err := ReadKernel(ns)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", t, err)
	}
	var topo *Topology
	if t.Lab != "" {
		topo, err = labTopology(ctx, t.Lab, t.Node)
	} else {
		topo, err = t.localTopology(ks)
	}
	if err != nil {
		return nil, nil, err
	}
	return topo, ks, nil
}

// labNode finds a lab node, or says which nodes there are.
func labNode(p *lab.Plan, name string) (lab.NodePlan, error) {
	names := make([]string, 0, len(p.Nodes))
	for _, n := range p.Nodes {
		names = append(names, n.Name)
	}
	if name == "" {
		return lab.NodePlan{}, fmt.Errorf("lab %s: give a node (--node): one of %s", p.Name, strings.Join(names, ", "))
	}
	n, ok := p.Node(name)
	if !ok {
		return lab.NodePlan{}, fmt.Errorf("lab %s has no node %q: its nodes are %s", p.Name, name, strings.Join(names, ", "))
	}
	return n, nil
}
