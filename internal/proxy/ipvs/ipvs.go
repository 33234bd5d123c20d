package ipvs

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/kdive/kdive/internal/xtables"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/proxy"
)

const (
	// Mode is the proxy mode's name.
	Mode = "ipvs"
	// Device is the dummy device that holds every service address, as
	// kube-proxy's kube-ipvs0 does.
	Device           = "kube-ipvs0"
	defaultScheduler = "rr"
	// DefaultDrainTimeout bounds how long a removed endpoint stays at
	// weight 0 while its connections finish.
	DefaultDrainTimeout = 30 * time.Second
)

// Schedulers are the IPVS schedulers kdive accepts, each a kernel module
// ip_vs_<name>.
var Schedulers = []string{"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "sh", "dh", "sed", "nq", "mh"}

// ValidScheduler reports whether name is one of Schedulers.
func ValidScheduler(name string) bool { return slices.Contains(Schedulers, name) }

// Options configure a Proxier.
type Options struct {
	// NetNS is the node's network namespace.
	NetNS *kernel.NetNS
	// Scheduler is the node's IPVS scheduler; empty means rr. A service
	// may choose its own (model.ServicePort.IPVSScheduler, from the
	// kdive.dev/ipvs-scheduler annotation).
	Scheduler string
	// DrainTimeout bounds how long an endpoint that left a service keeps
	// weight 0 for its connections to finish; 0 means DefaultDrainTimeout.
	DrainTimeout time.Duration
	// RejectUnknownPorts rejects new connections to service addresses on
	// ports that are no service (kube-proxy's KUBE-IPVS-FILTER).
	RejectUnknownPorts bool
	// Flavour forces iptables "nft" or "legacy"; empty detects which one
	// the node already uses, as kube-proxy's iptables wrapper does.
	Flavour string
	// OnRepair, when set, is told what a full Sync of the same plan as
	// the last successful one changed: someone else had changed it (the
	// agent counts these as drift repairs).
	OnRepair func(objects []string)
}

// Proxier is the IPVS proxy backend. It is safe for concurrent use; Sync
// and Cleanup serialize.
type Proxier struct {
	opts Options

	mu       sync.Mutex
	flavour  xtables.Flavour      // iptables flavour in use, once detected
	applied  map[string]appliedVS // virtual servers as last applied, by key
	draining map[drainKey]drainState
	reaper   *time.Timer
	reapErr  error
	stats    SyncStats
	// lastFailed makes the next Sync read everything back.
	lastFailed bool
	// synced: the last Sync succeeded.
	synced bool
}

var _ proxy.Backend = (*Proxier)(nil)

// New returns a Proxier. It touches nothing: Sync does.
func New(opts Options) *Proxier {
	return &Proxier{opts: opts}
}

// Mode is "ipvs".
func (p *Proxier) Mode() string { return Mode }

func (p *Proxier) config() Config {
	return Config{Scheduler: p.opts.Scheduler, RejectUnknownPorts: p.opts.RejectUnknownPorts}
}

func (p *Proxier) drainTimeout() time.Duration {
	if p.opts.DrainTimeout > 0 {
		return p.opts.DrainTimeout
	}
	return DefaultDrainTimeout
}

// Render is the plan Sync would apply for d.
func (p *Proxier) Render(d *proxy.Desired) *Ruleset { return Render(d, p.config()) }

// SyncStats count what the last Sync changed in the kernel.
type SyncStats struct {
	VirtualServersAdded, VirtualServersUpdated, VirtualServersDeleted int
	RealServersAdded, RealServersUpdated, RealServersDeleted          int
	// RealServersDraining are at weight 0 waiting for their connections.
	RealServersDraining                int
	AddressesAdded, AddressesDeleted   int
	SetEntriesAdded, SetEntriesDeleted int
	// IptablesRestored says iptables-restore ran (the rules differed).
	IptablesRestored bool
}

// Changed says whether the sync changed anything.
func (s SyncStats) Changed() bool {
	d := s
	d.RealServersDraining = 0
	return d != SyncStats{}
}

// LastSync returns what the last Sync changed.
func (p *Proxier) LastSync() SyncStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stats
}

// Sync renders d and applies the difference to the kernel: kube-ipvs0's
// addresses, the ipsets, the iptables rules, the virtual servers and
// their real servers. State left by a previous process is adopted, not
// flushed. Endpoints that left a service are drained (weight 0) and
// deleted when their connections end or DrainTimeout passes.
func (p *Proxier) Sync(ctx context.Context, d *proxy.Desired) error {
	if s := p.opts.Scheduler; s != "" && !ValidScheduler(s) {
		return fmt.Errorf("ipvs: scheduler %q is not one of %s", s, strings.Join(Schedulers, ", "))
	}
	if p.opts.NetNS == nil {
		return fmt.Errorf("ipvs: no network namespace given")
	}
	r := Render(d, p.config())
	p.mu.Lock()
	defer p.mu.Unlock()
	// A resync of what the last Sync applied, which the tracker says
	// did not change since: whatever it changes, it repairs.
	again := d.Resync && d.Changed != nil && len(d.Changed) == 0 && !p.lastFailed && p.synced
	p.synced = false
	changed := d.Changed
	if d.Resync {
		changed = nil // read every virtual server back
	}
	if err := p.apply(ctx, r, changed); err != nil {
		return err
	}
	p.synced = true
	if again && p.stats.Changed() && p.opts.OnRepair != nil {
		p.opts.OnRepair(p.stats.repairs())
	}
	return nil
}

// repairs names what a Sync changed, for Options.OnRepair.
func (s SyncStats) repairs() []string {
	var out []string
	for _, c := range []struct {
		n    int
		what string
	}{
		{s.VirtualServersAdded, "virtual server added"}, {s.VirtualServersUpdated, "virtual server updated"},
		{s.VirtualServersDeleted, "virtual server deleted"}, {s.RealServersAdded, "real server added"},
		{s.RealServersUpdated, "real server updated"}, {s.RealServersDeleted, "real server deleted"},
		{s.AddressesAdded, "address added to " + Device}, {s.AddressesDeleted, "address deleted from " + Device},
		{s.SetEntriesAdded, "ipset entry added"}, {s.SetEntriesDeleted, "ipset entry deleted"},
	} {
		for range c.n {
			out = append(out, c.what)
		}
	}
	if s.IptablesRestored {
		out = append(out, "iptables rules restored")
	}
	return out
}

// Cleanup removes everything the IPVS mode programs: its virtual servers,
// kube-ipvs0, its iptables rules (in both iptables-nft and
// iptables-legacy) and its ipsets. It is safe on a node that never ran
// the mode, and leaves the iptables mode's same-named chains alone.
func (p *Proxier) Cleanup(ctx context.Context) error {
	if p.opts.NetNS == nil {
		return fmt.Errorf("ipvs: no network namespace given")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stopReaper()
	return p.cleanup(ctx)
}
