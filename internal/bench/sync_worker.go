package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"github.com/kdive/kdive/internal/xtables"
	"io"
	"net/netip"
	"slices"
	"syscall"
	"time"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy"
	"github.com/kdive/kdive/internal/proxy/modes"
	"github.com/kdive/kdive/internal/proxy/nftables"
)

// SyncSpec is one measurement: a mode (and iptables flavour) at a size,
// programmed into the namespace NetNS, which the caller created empty and
// deletes afterwards. It is what the parent sends a worker on stdin.
type SyncSpec struct {
	Mode      string `json:"mode"`
	Flavour   string `json:"flavour,omitempty"`
	Services  int    `json:"services"`
	Endpoints int    `json:"endpoints"`
	NetNS     string `json:"netns"`
}

// Repetitions of the small changes; the reported time is the median.
const (
	endpointChanges = 5
	serviceAdds     = 3
)

// ServeSyncWorker is the worker half of RunSync: it reads a SyncSpec as
// JSON from in, measures it in this process (MeasureSyncSpec) and writes
// the SyncRun as JSON to out. `kdive bench sync --worker` runs it, so each
// measurement's peak RSS is a process of its own.
func ServeSyncWorker(ctx context.Context, in io.Reader, out io.Writer) error {
	var spec SyncSpec
	if err := json.NewDecoder(in).Decode(&spec); err != nil {
		return fmt.Errorf("bench sync worker: read spec: %w", err)
	}
	run, err := MeasureSyncSpec(ctx, spec)
	if err != nil {
		return err
	}
	return json.NewEncoder(out).Encode(run)
}

// MeasureSyncSpec runs the agent's proxy backend for spec.Mode in this
// process: a first Sync of GenerateDesired(services, endpoints) into the
// empty namespace, one endpoint of one service replaced (median of 5), one
// service added (median of 3), a Sync told nothing changed and a full
// resync (Resync, nothing changed) that finds nothing to do. It counts what the first
// Sync programmed from the rendered state. The floor and the peak RSS are
// the parent's to measure; ProcessRSSBytes is this process's own peak.
func MeasureSyncSpec(ctx context.Context, spec SyncSpec) (SyncRun, error) {
	run := SyncRun{Mode: spec.Mode, Flavour: spec.Flavour, Services: spec.Services, Endpoints: spec.Endpoints}
	what := spec.label()
	if spec.Services < 1 || spec.Endpoints < 1 {
		return run, fmt.Errorf("bench sync %s: need at least 1 service and 1 endpoint", what)
	}
	ns, err := kernel.OpenNetNS(spec.NetNS)
	if err != nil {
		return run, fmt.Errorf("bench sync %s: %w", what, err)
	}
	defer ns.Close()
	b, err := newSyncBackend(spec, ns)
	if err != nil {
		return run, fmt.Errorf("bench sync %s: %w", what, err)
	}
	defer b.close()

	d := nftables.GenerateDesired(spec.Services, spec.Endpoints)
	b.count(d, &run)
	timed := func(step string, d *proxy.Desired) (float64, error) {
		start := time.Now()
		if err := b.Sync(ctx, d); err != nil {
			return 0, fmt.Errorf("bench sync %s: %s: %w", what, step, err)
		}
		return time.Since(start).Seconds(), nil
	}
	if run.FirstSyncSeconds, err = timed("first sync", d); err != nil {
		return run, err
	}
	// One endpoint of the middle service replaced by a new pod.
	i := spec.Services / 2
	sp := nftables.GeneratedPort(i, spec.Endpoints)
	var times []float64
	for n := range endpointChanges {
		sp.Endpoints[0].IP = netip.AddrFrom4([4]byte{10, 15, 255, byte(n + 1)})
		t, err := timed("one-endpoint change", withPort(d, i, sp))
		if err != nil {
			return run, err
		}
		times = append(times, t)
	}
	run.EndpointChangeSeconds = median(times)
	times = times[:0]
	for n := range serviceAdds {
		sp := nftables.GeneratedPort(spec.Services+n, spec.Endpoints)
		d.Services = append(d.Services, proxy.Resolve(sp, d.Node))
		d.Changed = map[model.ServicePortName]bool{sp.Name: true}
		t, err := timed("one-service add", d)
		if err != nil {
			return run, err
		}
		times = append(times, t)
	}
	run.ServiceAddSeconds = median(times)
	d.Changed = map[model.ServicePortName]bool{}
	if run.NoopSyncSeconds, err = timed("no-op sync", d); err != nil {
		return run, err
	}
	// The agent's periodic resync: the tracker names no change.
	d.Changed, d.Resync = map[model.ServicePortName]bool{}, true
	if run.FullResyncSeconds, err = timed("full resync", d); err != nil {
		return run, err
	}
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err == nil {
		run.ProcessRSSBytes = ru.Maxrss * 1024 // KiB on Linux
	}
	return run, nil
}

// syncBackend is a mode's proxy.Backend with what the bench needs besides
// Sync: how big a state is in the mode's terms, and releasing the backend.
type syncBackend struct {
	proxy.Backend
	size func(*proxy.Desired) modes.Size
}

// close ends the backend's long-lived tools (the nftables session).
func (b *syncBackend) close() {
	if c, ok := b.Backend.(io.Closer); ok {
		_ = c.Close() // the namespace goes next
	}
}

func (b *syncBackend) count(d *proxy.Desired, run *SyncRun) {
	s := b.size(d)
	run.Rules, run.Elements, run.VirtualServers, run.RealServers = s.Rules, s.Elements, s.VirtualServers, s.RealServers
}

func newSyncBackend(spec SyncSpec, ns *kernel.NetNS) (*syncBackend, error) {
	m, err := modes.Get(spec.Mode)
	if err != nil {
		return nil, err
	}
	if spec.Mode == ModeIPTables && !xtables.Flavour(spec.Flavour).Valid() {
		return nil, fmt.Errorf("iptables flavour %q: want nft or legacy", spec.Flavour)
	}
	return &syncBackend{Backend: m.New(modes.Options{NetNS: ns, Flavour: spec.Flavour}), size: m.Size}, nil
}

// withPort sets d's service i to sp (resolved), marking it changed.
func withPort(d *proxy.Desired, i int, sp model.ServicePort) *proxy.Desired {
	sp.Endpoints = slices.Clone(sp.Endpoints)
	d.Services[i] = proxy.Resolve(sp, d.Node)
	d.Changed = map[model.ServicePortName]bool{sp.Name: true}
	return d
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}
