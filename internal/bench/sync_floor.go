package bench

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/proxy/modes"
)

// measureFloor dumps what the worker left in node with the kernel's own
// tools and times loading it into the empty namespace floor in one shot
// per tool: the least any agent could spend on the same ruleset. The
// tools are the mode's (modes.Mode.Dumps); a missing one leaves the floor
// unmeasured, with a note.
func measureFloor(ctx context.Context, spec SyncSpec, node, floor *kernel.NetNS, run *SyncRun) error {
	m, err := modes.Get(spec.Mode)
	if err != nil {
		return err
	}
	var steps []floorStep
	var missing []string
	for _, d := range m.Dumps(spec.Flavour) {
		if err := d.Tool.Installed(); err != nil {
			missing = append(missing, err.Error())
		}
		steps = append(steps, floorStep{tool: d.Tool, optional: d.Optional})
	}
	if len(missing) > 0 {
		run.FloorNote = "not measured: " + strings.Join(missing, "; ")
		return nil
	}
	if m.Device != "" {
		steps = append(steps, floorStep{device: m.Device})
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
	// device: a dummy device and its addresses, with `ip -batch`.
	device string
	// optional: a dump without rules is left out (the iptables flavour
	// the mode did not use).
	optional bool
	dump     string
}

func (s *floorStep) name() string {
	if s.device != "" {
		return "ip -batch"
	}
	return s.tool.Name
}

func (s *floorStep) save(ctx context.Context, node *kernel.NetNS) error {
	if s.device != "" {
		l, err := node.LinkByName(s.device)
		if err != nil {
			return err
		}
		var b strings.Builder
		fmt.Fprintf(&b, "link add %s type dummy\n", s.device)
		for _, p := range l.Addrs {
			fmt.Fprintf(&b, "address add %s dev %s\n", p, s.device)
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
	if s.device != "" {
		return floor.IPBatch(ctx, s.dump)
	}
	return floor.RestoreRuleset(ctx, s.tool, s.dump)
}
