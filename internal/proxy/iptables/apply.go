package iptables

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/proxy"
)

// Options configure a Proxier.
type Options struct {
	// NetNS is the network namespace whose iptables the proxier programs
	// (the node's).
	NetNS *kernel.NetNS
	// Flavour forces iptables-nft or iptables-legacy; empty detects the
	// one the node already uses (at the first Sync).
	Flavour Flavour
	// OnRepair, when set, is told what a full Sync found changed by
	// someone else and put back: chains whose rules differed from what
	// this proxier last wrote, and jumps from the built-in chains that
	// were gone (the agent counts them).
	OnRepair func(objects []string)
}

// Proxier is the iptables proxy backend. It remembers what it programmed
// and restores only the chains that changed (iptables-restore --noflush),
// checking the canary chains first.
type Proxier struct {
	opts Options

	mu      sync.Mutex
	flavour Flavour
	r       *renderer
	// prev is the Ruleset last programmed; applied the text hash of every
	// chain it holds. nil when unknown (before the first Sync, after a
	// failed one, after Cleanup): the next Sync rewrites everything.
	prev    *Ruleset
	applied map[chainKey]uint64
	seed    maphash.Seed
	stats   Stats

	// switched: the other flavour was cleaned of kdive's rules (once per
	// Proxier, at its first full Sync).
	switched bool
	// seen is, for legacy iptables, each table's entry count and size
	// when the canary was last known present: while they stay the same
	// nobody touched the table, and the canary need not be read (reading
	// the nat table costs 0.5 s at 10,000 services; this costs 10 µs).
	seen map[Table]kernel.LegacyTableInfo

	// run executes iptables tools; sysctl writes a sysctl; tableInfo
	// reads a legacy table's size. Tests wrap them.
	run       runFunc
	sysctl    func(name, value string) error
	tableInfo func(t Table) (kernel.LegacyTableInfo, error)
}

// Stats count what Sync did, for the agent's metrics.
type Stats struct {
	Syncs        int
	FullSyncs    int
	PartialSyncs int
	// NoopSyncs found nothing to change and ran no iptables-restore.
	NoopSyncs int
	// CanaryResyncs are full syncs forced by a missing canary: someone
	// flushed or deleted kdive's rules.
	CanaryResyncs int
	// Repairs are chains and jumps found changed by someone else and
	// written again (Options.OnRepair).
	Repairs  int
	Failures int
	// Rollbacks are failed Syncs that had committed some transactions
	// and put back what they changed (see rollback.go).
	Rollbacks int
	Last      SyncInfo
}

// SyncInfo describes the last successful Sync.
type SyncInfo struct {
	Full       bool
	CanaryLost bool
	// Restores is the number of iptables-restore runs; Bytes their input.
	Restores      int
	Bytes         int
	ChainsWritten int
	RulesWritten  int
	ChainsDeleted int
	Duration      time.Duration
}

var _ proxy.Backend = (*Proxier)(nil)

// New returns a Proxier; it does nothing until Sync.
func New(opts Options) *Proxier {
	p := &Proxier{opts: opts, r: newRenderer(), seed: maphash.MakeSeed()}
	p.run = func(ctx context.Context, stdin, name string, args ...string) (string, error) {
		if p.opts.NetNS == nil {
			return "", errNoNetNS
		}
		return p.opts.NetNS.Run(ctx, stdin, name, args...)
	}
	p.sysctl = func(name, value string) error {
		if p.opts.NetNS == nil {
			return errNoNetNS
		}
		return p.opts.NetNS.Sysctl(name, value)
	}
	p.tableInfo = func(t Table) (kernel.LegacyTableInfo, error) {
		if p.opts.NetNS == nil {
			return kernel.LegacyTableInfo{}, errNoNetNS
		}
		return p.opts.NetNS.LegacyIPTablesInfo(string(t))
	}
	return p
}

var errNoNetNS = errors.New("iptables proxier: no network namespace")

// Mode is the proxy mode's name.
const Mode = "iptables"

// Mode is "iptables".
func (p *Proxier) Mode() string { return Mode }

// Flavour is the iptables in use: Options.Flavour, or what the first Sync
// detected (empty before).
func (p *Proxier) Flavour() Flavour {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.flavour
}

// Stats returns the counters.
func (p *Proxier) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stats
}

// Ruleset is what the last successful Sync programmed (nil before).
func (p *Proxier) Ruleset() *Ruleset {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.prev
}

func (p *Proxier) ensureFlavour(ctx context.Context) error {
	if p.flavour != "" {
		return nil
	}
	if p.opts.Flavour != "" {
		if !p.opts.Flavour.Valid() {
			return fmt.Errorf("iptables flavour %q: want nft or legacy", p.opts.Flavour)
		}
		p.flavour = p.opts.Flavour
		return nil
	}
	f, err := detectFlavour(ctx, p.run)
	if err != nil {
		return err
	}
	p.flavour = f
	return nil
}

// Sync programs d. With d.Changed it renders only the changed ports and
// restores only the chains whose text changed since the last Sync
// (nothing at all when none did); a full Sync (d.Full, the first
// one, or after the canary went missing or a Sync failed) reads
// iptables-save and restores every chain that differs from what it should
// hold, deletes kdive chains that are no longer wanted and inserts missing
// jumps from the built-in chains.
func (p *Proxier) Sync(ctx context.Context, d *proxy.Desired) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	start := time.Now()
	p.stats.Syncs++
	info, err := p.sync(ctx, d)
	if err != nil {
		p.stats.Failures++
		p.forget()
		return err
	}
	info.Duration = time.Since(start)
	p.stats.Last = info
	return nil
}

func (p *Proxier) sync(ctx context.Context, d *proxy.Desired) (SyncInfo, error) {
	var info SyncInfo
	if err := p.ensureFlavour(ctx); err != nil {
		return info, err
	}
	full := d.Full() || p.applied == nil
	// What the kernel should hold, when known: a full Sync that finds it
	// otherwise repairs drift.
	applied := p.applied
	if !full {
		ok, err := p.canaryOK(ctx)
		if err != nil {
			return info, err
		}
		if !ok {
			full, info.CanaryLost = true, true
			p.stats.CanaryResyncs++
			p.forget()
		}
	}
	var pl *plan
	var rs *Ruleset
	if full {
		p.leaveOtherFlavour(ctx)
		rs = p.r.render(d, nil)
		var err error
		if pl, err = p.planFull(ctx, rs); err != nil {
			return info, err
		}
	} else {
		rs = p.r.render(d, p.prev)
		pl = p.planPartial(rs)
	}
	if err := p.localnet(d); err != nil {
		return info, err
	}
	info.Full = full
	if pl.empty() {
		p.stats.NoopSyncs++
		if full {
			p.stats.FullSyncs++
			p.applied = pl.hash
			p.remember()
		}
		p.prev = rs
		return info, nil
	}
	info.ChainsWritten, info.RulesWritten, info.ChainsDeleted = pl.counts()
	var written func(*Chain, string)
	if full {
		written = func(c *Chain, text string) { pl.hash[chainKey{c.Table, c.Name}] = maphash.String(p.seed, text) }
	}
	inputs := pl.inputs(p.flavour, written)
	u := undoFor(pl, inputs)
	for _, in := range inputs {
		info.Restores++
		info.Bytes += len(in)
		if err := p.restore(ctx, in, rs); err != nil {
			if u == nil {
				return info, err
			}
			// The transactions before this one are committed: put them back.
			if undone, rerr := p.rollback(ctx, u); rerr != nil {
				return info, fmt.Errorf("%w; and rolling back what the sync committed before failed: %w", err, rerr)
			} else if undone {
				p.stats.Rollbacks++
			}
			return info, err
		}
	}
	if full {
		p.stats.FullSyncs++
		p.applied = map[chainKey]uint64{}
	} else {
		p.stats.PartialSyncs++
	}
	for t, names := range pl.del {
		for _, n := range names {
			delete(p.applied, chainKey{t, n})
		}
	}
	for k, h := range pl.hash {
		p.applied[k] = h
	}
	p.prev = rs
	p.remember()
	if full && applied != nil {
		p.repaired(pl, applied)
	}
	return info, nil
}

// repaired reports what a full plan wrote although this proxier had
// written it already: the chains someone else changed (their text is the
// one last applied) and the jumps from built-in chains someone deleted.
func (p *Proxier) repaired(pl *plan, applied map[chainKey]uint64) {
	var objs []string
	check := func(c *Chain) {
		if h, ok := applied[chainKey{c.Table, c.Name}]; ok && h == p.hashOf(c) {
			objs = append(objs, "chain "+string(c.Table)+"/"+c.Name)
		}
	}
	for _, t := range tables {
		for _, c := range pl.top[t] {
			check(c)
		}
		for _, l := range pl.extra[t] {
			objs = append(objs, "rule "+string(t)+" "+l)
		}
	}
	for _, g := range pl.svc {
		for _, c := range g {
			check(c)
		}
	}
	p.stats.Repairs += len(objs)
	if len(objs) > 0 && p.opts.OnRepair != nil {
		p.opts.OnRepair(objs)
	}
}

// leaveOtherFlavour removes kdive's rules from the flavour not in use: a
// node that switched flavours would otherwise run both rule sets (both
// hook the same places). Best effort: the tools of the other flavour may
// be missing or broken, and that must not stop this one.
func (p *Proxier) leaveOtherFlavour(ctx context.Context) {
	if p.switched {
		return
	}
	other := FlavourLegacy
	if p.flavour == FlavourLegacy {
		other = FlavourNFT
	}
	p.switched = p.cleanup(ctx, other) == nil
}

// forget drops what the kernel is believed to hold: the next Sync is full.
func (p *Proxier) forget() {
	p.prev, p.applied, p.seen = nil, nil, nil
}

func (p *Proxier) hashOf(c *Chain) uint64 { return maphash.String(p.seed, c.text()) }

// localnet lets DNAT send 127.0.0.1 traffic elsewhere when NodePorts
// answer on localhost (upstream sets the same sysctl; KUBE-PROXY-FIREWALL
// then drops what it would otherwise let in from outside).
func (p *Proxier) localnet(d *proxy.Desired) error {
	for _, ip := range d.NodePortIPs {
		if ip.IsLoopback() {
			return p.sysctl("net.ipv4.conf.all.route_localnet", "1")
		}
	}
	return nil
}

var failedLine = regexp.MustCompile(`line (\d+) failed`)

// restore runs iptables-restore --noflush. On failure it names the chain
// (and service port) of the line iptables-restore refused.
func (p *Proxier) restore(ctx context.Context, input string, rs *Ruleset) error {
	tool := p.flavour.Restore()
	_, err := p.run(ctx, input, tool, "-w", "--noflush")
	if err == nil {
		return nil
	}
	if m := failedLine.FindStringSubmatch(err.Error()); m != nil {
		n, _ := strconv.Atoi(m[1])
		lines := strings.Split(input, "\n")
		if n >= 1 && n <= len(lines) {
			what := lines[n-1]
			f := strings.Fields(what)
			if len(f) >= 2 && (f[0] == "-A" || f[0] == "-X") {
				for _, c := range rs.Chains() {
					if c.Name == f[1] && c.Service != nil {
						return fmt.Errorf("sync service %s: chain %s: %w", c.Service, c.Name, err)
					}
				}
				return fmt.Errorf("sync chain %s: %w", f[1], err)
			}
		}
	}
	return fmt.Errorf("sync iptables (%s): %w", p.flavour, err)
}
