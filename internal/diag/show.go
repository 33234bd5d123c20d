package diag

import (
	"context"
	"fmt"
	"strconv"
	"strings"
)

// RoutesReport is `kdive show routes`.
type RoutesReport struct {
	Lab    string     `json:"lab,omitempty"`
	Node   string     `json:"node"`
	Routes []RouteRow `json:"routes"`
	Notes  []string   `json:"notes,omitempty"`
}

// LinksReport is `kdive show links`.
type LinksReport struct {
	Lab   string    `json:"lab,omitempty"`
	Node  string    `json:"node"`
	Links []LinkRow `json:"links"`
	Notes []string  `json:"notes,omitempty"`
}

// PodsReport is `kdive show pods`; Node is empty when it covers every node
// of a lab.
type PodsReport struct {
	Lab   string   `json:"lab,omitempty"`
	Node  string   `json:"node,omitempty"`
	Pods  []PodRow `json:"pods"`
	Notes []string `json:"notes,omitempty"`
}

// BlocksReport is `kdive show blocks`; Node (whose routes fill
// BlockRow.Route) is empty for a whole lab.
type BlocksReport struct {
	Lab    string     `json:"lab,omitempty"`
	Node   string     `json:"node,omitempty"`
	Blocks []BlockRow `json:"blocks"`
	Notes  []string   `json:"notes,omitempty"`
}

// Routes annotates the target node's routes.
func Routes(ctx context.Context, t Target) (*RoutesReport, error) {
	topo, ks, err := Collect(ctx, t)
	if err != nil {
		return nil, err
	}
	return &RoutesReport{Lab: topo.Lab, Node: topo.Node, Routes: AnnotateRoutes(topo, ks), Notes: topo.Notes}, nil
}

// Links annotates the target node's interfaces.
func Links(ctx context.Context, t Target) (*LinksReport, error) {
	topo, ks, err := Collect(ctx, t)
	if err != nil {
		return nil, err
	}
	return &LinksReport{Lab: topo.Lab, Node: topo.Node, Links: AnnotateLinks(topo, ks), Notes: topo.Notes}, nil
}

// Pods lists the target node's pods; a lab target without a node lists
// every node's.
func Pods(ctx context.Context, t Target) (*PodsReport, error) {
	if t.Lab != "" && t.Node == "" {
		return labPods(ctx, t)
	}
	topo, ks, err := Collect(ctx, t)
	if err != nil {
		return nil, err
	}
	return &PodsReport{Lab: topo.Lab, Node: topo.Node, Pods: AnnotatePods(topo, ks), Notes: topo.Notes}, nil
}

func labPods(ctx context.Context, t Target) (*PodsReport, error) {
	topo, err := t.Topology(ctx)
	if err != nil {
		return nil, err
	}
	r := &PodsReport{Lab: t.Lab, Pods: []PodRow{}, Notes: topo.Notes}
	for _, n := range topo.Nodes {
		nt := t
		nt.Node = n.Name
		ns, err := nt.OpenNetNS()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", nt, err)
		}
		ks, err := ReadKernel(ns)
		ns.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", nt, err)
		}
		nodeTopo := *topo
		nodeTopo.Node = n.Name
		r.Pods = append(r.Pods, AnnotatePods(&nodeTopo, ks)...)
	}
	return r, nil
}

// Blocks lists every known pod block and how full it is; a lab target
// without a node leaves out how a node routes them.
func Blocks(ctx context.Context, t Target) (*BlocksReport, error) {
	var (
		topo *Topology
		ks   = &KernelState{}
		err  error
	)
	if t.Lab != "" && t.Node == "" {
		topo, err = t.Topology(ctx)
	} else {
		topo, ks, err = Collect(ctx, t)
	}
	if err != nil {
		return nil, err
	}
	return &BlocksReport{Lab: topo.Lab, Node: topo.Node, Blocks: AnnotateBlocks(topo, ks), Notes: topo.Notes}, nil
}

// ShowRoutes writes `kdive show routes`.
func ShowRoutes(ctx context.Context, t Target, o Output) error {
	r, err := Routes(ctx, t)
	if err != nil {
		return err
	}
	if o.Format == FormatJSON {
		return o.JSON(r)
	}
	rows := make([][]string, 0, len(r.Routes))
	for _, x := range r.Routes {
		rows = append(rows, []string{x.Route, x.Owner, x.Meaning})
	}
	if err := o.Table([]string{"ROUTE", "OWNER", "MEANING"}, rows); err != nil {
		return err
	}
	return o.Notes(r.Notes)
}

// ShowLinks writes `kdive show links`.
func ShowLinks(ctx context.Context, t Target, o Output) error {
	r, err := Links(ctx, t)
	if err != nil {
		return err
	}
	if o.Format == FormatJSON {
		return o.JSON(r)
	}
	rows := make([][]string, 0, len(r.Links))
	for _, x := range r.Links {
		state := "down"
		if x.Up {
			state = "up"
		}
		rows = append(rows, []string{x.Name, x.Type, state, strconv.Itoa(x.MTU), strings.Join(x.Addrs, ","), x.Role, x.Meaning})
	}
	if err := o.Table([]string{"NAME", "TYPE", "STATE", "MTU", "ADDRESSES", "ROLE", "MEANING"}, rows); err != nil {
		return err
	}
	return o.Notes(r.Notes)
}

// ShowPods writes `kdive show pods`.
func ShowPods(ctx context.Context, t Target, o Output) error {
	r, err := Pods(ctx, t)
	if err != nil {
		return err
	}
	if o.Format == FormatJSON {
		return o.JSON(r)
	}
	rows := make([][]string, 0, len(r.Pods))
	for _, x := range r.Pods {
		rows = append(rows, []string{podLabel(x), x.Node, x.IP, x.HostInterface, x.NetNS, shortID(x.ContainerID), x.IfName, strings.Join(x.Problems, "; ")})
	}
	if err := o.Table([]string{"POD", "NODE", "IP", "HOST-IF", "NETNS", "CONTAINER", "IFNAME", "PROBLEMS"}, rows); err != nil {
		return err
	}
	return o.Notes(r.Notes)
}

// ShowBlocks writes `kdive show blocks`.
func ShowBlocks(ctx context.Context, t Target, o Output) error {
	r, err := Blocks(ctx, t)
	if err != nil {
		return err
	}
	if o.Format == FormatJSON {
		return o.JSON(r)
	}
	rows := make([][]string, 0, len(r.Blocks))
	for _, x := range r.Blocks {
		inUse := "?"
		if x.InUse != nil {
			inUse = strconv.Itoa(*x.InUse)
		}
		node := x.Node
		if x.Local {
			node += " (this node)"
		}
		rows = append(rows, []string{x.Block, node, x.NodeIP, inUse + "/" + strconv.Itoa(x.Capacity), x.Route, strings.Join(x.Problems, "; ")})
	}
	if err := o.Table([]string{"BLOCK", "NODE", "NODE-IP", "IN-USE", "ROUTE", "PROBLEMS"}, rows); err != nil {
		return err
	}
	return o.Notes(r.Notes)
}
