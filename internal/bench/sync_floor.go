package bench

import (
	"context"
	"errors"
	"fmt"
	"github.com/kdive/kdive/internal/xtables"
	"strings"
	"time"

	"github.com/kdive/kdive/internal/kernel"
)

// ipvsDevice is the dummy device the IPVS mode binds service addresses to.
const ipvsDevice = "kube-ipvs0"

// measureFloor dumps what the worker left in node with the kernel's own
// tools and times loading it into the empty namespace floor in one shot
// per tool: the least any agent could spend on the same ruleset.
func measureFloor(ctx context.Context, spec SyncSpec, node, floor *kernel.NetNS, run *SyncRun) error {
	var steps []floorStep
	switch spec.Mode {
	case ModeNftables:
		steps = []floorStep{{tool: kernel.ToolNft}}
	case ModeIPTables:
		steps = []floorStep{{tool: xtables.Flavour(spec.Flavour).Tool()}}
	case ModeIPVS:
		var missing []string
		for _, t := range []kernel.RulesetTool{kernel.ToolIPSet, kernel.ToolIPVSAdm} {
			if err := t.Installed(); err != nil {
				missing = append(missing, err.Error())
			}
		}
		if len(missing) > 0 {
			run.FloorNote = "not measured: " + strings.Join(missing, "; ")
			return nil
		}
		steps = []floorStep{{tool: kernel.ToolIPSet}}
		// The mode's rules are in the flavour it detected; take both.
		for _, f := range xtables.Flavours {
			if f.Tool().Installed() == nil {
				steps = append(steps, floorStep{tool: f.Tool(), optional: true})
			}
		}
		steps = append(steps, floorStep{tool: kernel.ToolIPVSAdm}, floorStep{addrs: true})
	default:
		return fmt.Errorf("unknown mode %q", spec.Mode)
	}
	var names []string
	for i := range steps {
		if err := steps[i].save(ctx, node); err != nil {
			return err
		}
		if steps[i].dump != "" {
			names = append(names, steps[i].name())
		}
	}
	start := time.Now()
	for _, s := range steps {
		if err := s.restore(ctx, floor); err != nil {
			return err
		}
	}
	run.FloorSeconds = time.Since(start).Seconds()
	run.FloorTool = strings.Join(names, " + ")
	return nil
}

// floorStep is one tool's part of the floor: its dump of the synced
// namespace, loaded into the fresh one.
type floorStep struct {
	tool kernel.RulesetTool
	// addrs: kube-ipvs0 and its addresses, with `ip -batch`.
	addrs bool
	// optional: a dump without rules is left out (the iptables flavour
	// the mode did not use).
	optional bool
	dump     string
}

func (s *floorStep) name() string {
	if s.addrs {
		return "ip -batch"
	}
	return s.tool.Name
}

func (s *floorStep) save(ctx context.Context, node *kernel.NetNS) error {
	if s.addrs {
		l, err := node.LinkByName(ipvsDevice)
		if err != nil {
			return err
		}
		var b strings.Builder
		fmt.Fprintf(&b, "link add %s type dummy\n", ipvsDevice)
		for _, p := range l.Addrs {
			fmt.Fprintf(&b, "address add %s dev %s\n", p, ipvsDevice)
		}
		s.dump = b.String()
		return nil
	}
	out, err := node.SaveRuleset(ctx, s.tool)
	if err != nil {
		return err
	}
	if s.optional && !strings.Contains(out, "\n-A ") {
		return nil
	}
	if strings.TrimSpace(out) == "" {
		return errors.New(s.tool.Save[0] + ": the synced namespace holds nothing")
	}
	s.dump = out
	return nil
}

func (s *floorStep) restore(ctx context.Context, floor *kernel.NetNS) error {
	if s.dump == "" {
		return nil
	}
	if s.addrs {
		return floor.IPBatch(ctx, s.dump)
	}
	return floor.RestoreRuleset(ctx, s.tool, s.dump)
}
