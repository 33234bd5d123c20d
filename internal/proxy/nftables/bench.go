package nftables

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy"
)

// SyncBench is one run of MeasureSync.
type SyncBench struct {
	Services, Endpoints int
	// Elements and Rules count the ruleset; ScriptBytes is the size of
	// the nft script that creates it.
	Elements, Rules, ScriptBytes int
	// Render is Render of the whole state.
	Render time.Duration
	// First is the first Sync into an empty namespace; Floor is loading
	// the same ruleset with one `nft -f` into another empty namespace.
	First, Floor time.Duration
	// OneEndpoint is a Sync after one endpoint of one service was
	// replaced; RemoveEndpoint after one service lost or regained an
	// endpoint (its endpoint count changes). Both are medians of a few;
	// FirstChange is the first of them, which also starts the nft
	// session.
	OneEndpoint, RemoveEndpoint, FirstChange time.Duration
	// Noop is a Sync told that nothing changed; FullNoop the agent's
	// periodic resync (Resync, nothing changed) that finds nothing to do.
	Noop, FullNoop time.Duration
	// Restart is the first Sync of a new Proxier over the existing table
	// (an agent restart: the table is replaced whole).
	Restart time.Duration
}

func (b SyncBench) String() string {
	ms := func(d time.Duration) string { return fmt.Sprintf("%.1fms", float64(d.Microseconds())/1000) }
	return fmt.Sprintf("%d services × %d endpoints (%d elements, %d rules, %d KiB script): render %s, first sync %s (floor %s), one endpoint %s (first change %s), remove endpoint %s, no-op %s, full no-op %s, restart %s",
		b.Services, b.Endpoints, b.Elements, b.Rules, b.ScriptBytes/1024, ms(b.Render), ms(b.First), ms(b.Floor),
		ms(b.OneEndpoint), ms(b.FirstChange), ms(b.RemoveEndpoint), ms(b.Noop), ms(b.FullNoop), ms(b.Restart))
}

// MeasureSync times the proxier on GenerateDesired(services, endpoints):
// Render, a first Sync into node, the floor (the same ruleset loaded with
// one nft -f into floor), and incremental Syncs. node and floor must be
// empty namespaces the caller owns; the table is left in node.
func MeasureSync(ctx context.Context, node, floor *kernel.NetNS, services, endpoints int) (SyncBench, error) {
	b := SyncBench{Services: services, Endpoints: endpoints}
	if services < 2 || endpoints < 2 {
		return b, fmt.Errorf("measure sync: need at least 2 services and 2 endpoints")
	}
	d := GenerateDesired(services, endpoints)
	start := time.Now()
	rs := Render(d)
	b.Render = time.Since(start)
	for _, s := range rs.Sets {
		b.Elements += s.Len()
	}
	for _, c := range rs.Chains {
		b.Rules += len(c.Rules)
	}
	script := (&Transaction{Replace: rs}).String()
	b.ScriptBytes = len(script)

	start = time.Now()
	if err := floor.Nft(ctx, script); err != nil {
		return b, fmt.Errorf("measure sync: floor: %w", err)
	}
	b.Floor = time.Since(start)

	p := New(Options{NetNS: node})
	defer func() { p.Close() }()
	timed := func(d *proxy.Desired, into *time.Duration) error {
		start := time.Now()
		err := p.Sync(ctx, d)
		*into = time.Since(start)
		return err
	}
	if err := timed(d, &b.First); err != nil {
		return b, fmt.Errorf("measure sync: first: %w", err)
	}
	// One endpoint of the middle service replaced by a new pod, five
	// times (the median; the first also starts the nft session), then
	// the service losing and regaining an endpoint.
	i := services / 2
	sp := GeneratedPort(i, endpoints)
	var times []time.Duration
	for n := range 5 {
		sp.Endpoints[0].IP = netip.AddrFrom4([4]byte{10, 15, 255, byte(n)})
		var t time.Duration
		if err := timed(withPort(d, i, sp), &t); err != nil {
			return b, fmt.Errorf("measure sync: one endpoint: %w", err)
		}
		times = append(times, t)
	}
	b.FirstChange, b.OneEndpoint = times[0], median(times)
	times = times[:0]
	all := sp.Endpoints
	for n := range 4 {
		sp.Endpoints = all[n%2:]
		var t time.Duration
		if err := timed(withPort(d, i, sp), &t); err != nil {
			return b, fmt.Errorf("measure sync: remove endpoint: %w", err)
		}
		times = append(times, t)
	}
	b.RemoveEndpoint = median(times)
	d.Changed = map[model.ServicePortName]bool{}
	if err := timed(d, &b.Noop); err != nil {
		return b, fmt.Errorf("measure sync: no-op: %w", err)
	}
	// The agent's periodic resync: the tracker names no change.
	d.Changed, d.Resync = map[model.ServicePortName]bool{}, true
	if err := timed(d, &b.FullNoop); err != nil {
		return b, fmt.Errorf("measure sync: full no-op: %w", err)
	}
	p.Close()
	p = New(Options{NetNS: node})
	if err := timed(d, &b.Restart); err != nil {
		return b, fmt.Errorf("measure sync: restart: %w", err)
	}
	return b, nil
}

func median(ts []time.Duration) time.Duration {
	s := slices.Clone(ts)
	slices.Sort(s)
	return s[len(s)/2]
}

// withPort sets d's service i to sp (resolved), marking it changed.
func withPort(d *proxy.Desired, i int, sp model.ServicePort) *proxy.Desired {
	d.Services[i] = proxy.Resolve(sp, d.Node)
	d.Changed = map[model.ServicePortName]bool{sp.Name: true}
	return d
}
