package diag

import (
	"fmt"
	"slices"

	"github.com/kdive/kdive/internal/kernel"
)

// KernelState is a node's network state as the kernel reports it: the
// input the annotators give meaning to. ReadKernel fills it from a
// namespace; tests build it by hand.
type KernelState struct {
	Links  []kernel.Link
	Routes []kernel.Route
	// Tunnels are the IPIP and VXLAN devices with their endpoints.
	Tunnels []kernel.Tunnel
	// FDB holds the permanent entries of each VXLAN device, by device.
	FDB map[string][]kernel.FDBEntry
}

// ReadKernel reads a node's links, main-table routes, tunnels and VXLAN
// forwarding entries.
func ReadKernel(ns *kernel.NetNS) (*KernelState, error) {
	ks := &KernelState{FDB: map[string][]kernel.FDBEntry{}}
	var err error
	if ks.Links, err = ns.Links(); err != nil {
		return nil, err
	}
	if ks.Routes, err = ns.Routes(); err != nil {
		return nil, err
	}
	if ks.Tunnels, err = ns.Tunnels(); err != nil {
		return nil, err
	}
	for _, t := range ks.Tunnels {
		if t.Kind != kernel.TunnelVXLAN {
			continue
		}
		fdb, err := ns.FDB(t.Name)
		if err != nil {
			return nil, fmt.Errorf("read fdb of %s: %w", t.Name, err)
		}
		ks.FDB[t.Name] = fdb
	}
	return ks, nil
}

func (ks *KernelState) link(name string) (kernel.Link, bool) {
	i := slices.IndexFunc(ks.Links, func(l kernel.Link) bool { return l.Name == name })
	if i < 0 {
		return kernel.Link{}, false
	}
	return ks.Links[i], true
}

func (ks *KernelState) linkByIndex(idx int) (kernel.Link, bool) {
	i := slices.IndexFunc(ks.Links, func(l kernel.Link) bool { return l.Index == idx })
	if i < 0 {
		return kernel.Link{}, false
	}
	return ks.Links[i], true
}

func (ks *KernelState) tunnel(name string) (kernel.Tunnel, bool) {
	i := slices.IndexFunc(ks.Tunnels, func(t kernel.Tunnel) bool { return t.Name == name })
	if i < 0 {
		return kernel.Tunnel{}, false
	}
	return ks.Tunnels[i], true
}
