package verify

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/kdive/kdive/internal/lab"
	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy"
)

// maxDiffs bounds the differences listed per node.
const maxDiffs = 10

// checkConsistency reads every node's load-balancing table back from its
// kernel and compares it with what the API objects ask for.
func checkConsistency(ctx context.Context, e *env) Result {
	if e.opts.Inspect == nil {
		return skip("no kernel reader given: the proxy's tables cannot be read back")
	}
	// Read the objects again: the checks ran a while.
	snap, err := lab.Snapshot(ctx, e.st)
	if err != nil {
		return fail("read the lab's objects: " + err.Error())
	}
	want := expectedTables(e.plan, snap)
	var (
		bad, details []string
		services     int
	)
	for _, n := range e.plan.Nodes {
		ns, err := e.netns(n.NetNS)
		if err != nil {
			return fail(err.Error())
		}
		w, ok := want[n.Name]
		if !ok {
			bad = append(bad, n.Name)
			details = append(details, n.Name+": no Node object in the lab")
			continue
		}
		ins, err := e.opts.Inspect(ctx, ns, e.plan.Proxy.Mode)
		if errors.Is(err, ErrInspectUnavailable) {
			return skip(fmt.Sprintf("cannot read %s tables back: %v", e.plan.Proxy.Mode, err))
		}
		if err != nil {
			bad = append(bad, n.Name)
			details = append(details, fmt.Sprintf("%s: read the %s tables: %v", n.Name, e.plan.Proxy.Mode, err))
			continue
		}
		services += len(w.Services)
		resolveNames(ins, w)
		diffs := compareTables(ins.LB(), w)
		if len(diffs) == 0 {
			continue
		}
		bad = append(bad, fmt.Sprintf("%s (%d differences)", n.Name, len(diffs)))
		for i, d := range diffs {
			if i == maxDiffs {
				details = append(details, fmt.Sprintf("%s: and %d more", n.Name, len(diffs)-maxDiffs))
				break
			}
			details = append(details, n.Name+": "+d)
		}
	}
	if len(bad) > 0 {
		first := ""
		if len(details) > 0 {
			first = ": " + details[0]
		}
		return fail(fmt.Sprintf("kernel differs from the API objects on %s%s", strings.Join(bad, ", "), first), details...)
	}
	res := pass(fmt.Sprintf("%d nodes' %s tables equal the API objects (%d service ports)", len(e.plan.Nodes), e.plan.Proxy.Mode, services))
	res.Measurements = map[string]float64{"nodes": float64(len(e.plan.Nodes)), "servicePorts": float64(services)}
	return res
}

// resolveNames gives a reader that may hold shortened service port names
// (nftables' element comments are at most 128 bytes) the wanted ones, so
// that it names those ports in full.
func resolveNames(ins proxy.Inspection, want *proxy.LBTable) {
	r, ok := ins.(interface{ ResolveNames([]model.ServicePortName) })
	if !ok || want == nil {
		return
	}
	names := make([]model.ServicePortName, len(want.Services))
	for i, s := range want.Services {
		names[i] = s.Name
	}
	r.ResolveNames(names)
}

// compareTables lists how a node's table differs from the wanted one; a
// reader that found no table at all reads as an empty one.
func compareTables(got, want *proxy.LBTable) []string {
	if got == nil {
		got = &proxy.LBTable{}
	}
	return proxy.CompareLB(got, want)
}
