// Package modes is the one list of kdive's proxy modes: for each, its
// name, what it needs of the kernel, how its backend is built, how what it
// programmed is read back, and how big a state is in its terms. The agent,
// `kdive show`, `trace` and `verify`, and `kdive bench` take modes from
// here, so a mode is added in one place. (The agent's mode "none", no
// proxy at all, is not a mode here.)
package modes

import (
	"context"
	"fmt"
	"strings"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/proxy"
	"github.com/kdive/kdive/internal/proxy/iptables"
	"github.com/kdive/kdive/internal/proxy/ipvs"
	"github.com/kdive/kdive/internal/proxy/nftables"
	"github.com/kdive/kdive/internal/xtables"
)

// Options configure a mode's backend.
type Options struct {
	NetNS *kernel.NetNS
	// Flavour forces the iptables the iptables and ipvs modes use, "nft"
	// or "legacy"; "" detects it as kube-proxy does.
	Flavour string
	// IPVSScheduler is the ipvs mode's scheduler; "" is round robin.
	IPVSScheduler string
	// OnRepair, when not nil, is told what a full sync found changed by
	// someone else and put back.
	OnRepair func(repaired []string)
}

// Size is how big a desired state is in a mode's own terms.
type Size struct {
	// Rules are the rules of the mode's chains and the jumps into them.
	Rules int
	// Elements are set and map elements (nftables) or ipset entries (ipvs).
	Elements int
	// VirtualServers and RealServers are IPVS's (ipvs only).
	VirtualServers, RealServers int
}

// A Mode is one way of programming Services into the kernel.
type Mode struct {
	Name string
	// Needs are the kernel features the mode cannot run without.
	Needs []kernel.Feature
	// New builds the mode's backend.
	New func(Options) proxy.Backend
	// Inspect reads what the mode programmed in a namespace back.
	Inspect func(context.Context, *kernel.NetNS) (proxy.Inspection, error)
	// Size renders a state and counts it.
	Size func(*proxy.Desired) Size
	// Dumps are the kernel's own tools that save and restore what the
	// mode programs in a namespace, given the iptables flavour forced
	// ("" when detected), and Device a dummy device whose addresses it
	// programs ("" for none): what `kdive bench sync` loads in one shot
	// as the floor.
	Dumps  func(flavour string) []Dump
	Device string
}

// Dump is a tool that saves and restores part of what a mode programs;
// an Optional one may hold nothing (an iptables flavour the mode did not
// use).
type Dump struct {
	Tool     kernel.RulesetTool
	Optional bool
}

// installedFlavours are the iptables tools of both flavours that are
// installed, optional: a mode that detects its flavour used one of them.
func installedFlavours() []Dump {
	var out []Dump
	for _, f := range xtables.Flavours {
		if f.Tool().Installed() == nil {
			out = append(out, Dump{Tool: f.Tool(), Optional: true})
		}
	}
	return out
}

// all are the modes, in the order reports list them.
var all = []Mode{
	{
		Name:  nftables.Mode,
		Needs: []kernel.Feature{kernel.FeatureNFTables},
		New: func(o Options) proxy.Backend {
			return nftables.New(nftables.Options{NetNS: o.NetNS, OnRepair: o.OnRepair})
		},
		Inspect: nftables.Inspect,
		Dumps:   func(string) []Dump { return []Dump{{Tool: kernel.ToolNft}} },
		Size: func(d *proxy.Desired) Size {
			var s Size
			rs := nftables.Render(d)
			for _, c := range rs.Chains {
				s.Rules += len(c.Rules)
			}
			for _, set := range rs.Sets {
				s.Elements += set.Len()
			}
			return s
		},
	},
	{
		Name: iptables.Mode,
		New: func(o Options) proxy.Backend {
			return iptables.New(iptables.Options{NetNS: o.NetNS, Flavour: iptables.Flavour(o.Flavour), OnRepair: o.OnRepair})
		},
		Inspect: iptables.Inspect,
		Dumps: func(flavour string) []Dump {
			if flavour == "" {
				return installedFlavours()
			}
			return []Dump{{Tool: xtables.Flavour(flavour).Tool()}}
		},
		Size: func(d *proxy.Desired) Size {
			var s Size
			rs := iptables.Render(d)
			for _, c := range append(rs.Chains(), rs.Hooks...) {
				s.Rules += len(c.Rules)
			}
			return s
		},
	},
	{
		Name:  ipvs.Mode,
		Needs: []kernel.Feature{kernel.FeatureIPVS, kernel.FeatureDummy},
		New: func(o Options) proxy.Backend {
			return ipvs.New(ipvs.Options{NetNS: o.NetNS, Flavour: o.Flavour, Scheduler: o.IPVSScheduler, OnRepair: o.OnRepair})
		},
		Inspect: ipvs.Inspect,
		// The mode's rules are in the flavour it detected; take both.
		Dumps: func(string) []Dump {
			return append(append([]Dump{{Tool: kernel.ToolIPSet}}, installedFlavours()...), Dump{Tool: kernel.ToolIPVSAdm})
		},
		Device: ipvs.Device,
		Size: func(d *proxy.Desired) Size {
			rs := ipvs.Render(d, ipvs.Config{})
			s := Size{Rules: len(rs.Jumps), VirtualServers: len(rs.VirtualServers)}
			for _, c := range rs.Chains {
				s.Rules += len(c.Rules)
			}
			for _, set := range rs.Sets {
				s.Elements += len(set.Entries)
			}
			for _, vs := range rs.VirtualServers {
				s.RealServers += len(vs.RealServers)
			}
			return s
		},
	},
}

// All returns every mode, in report order: nftables, iptables, ipvs.
func All() []Mode { return append([]Mode(nil), all...) }

// Names returns the modes' names, in report order.
func Names() []string {
	names := make([]string, len(all))
	for i, m := range all {
		names[i] = m.Name
	}
	return names
}

// Get returns the mode called name.
func Get(name string) (Mode, error) {
	for _, m := range all {
		if m.Name == name {
			return m, nil
		}
	}
	return Mode{}, fmt.Errorf("proxy mode %q: want one of %s", name, strings.Join(Names(), ", "))
}

// Unavailable says why this kernel cannot run the mode, or nil when it can.
func (m Mode) Unavailable() error {
	for _, f := range m.Needs {
		if err := kernel.Probe(f); err != nil {
			return fmt.Errorf("kernel lacks %s (%v)", f, err)
		}
	}
	return nil
}
