package nftables

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/nft"
	"github.com/kdive/kdive/internal/proxy"
)

// Options configure a Proxier.
type Options struct {
	// NetNS is the network namespace whose nftables the proxier programs
	// (the node's).
	NetNS *kernel.NetNS
	// NFT, when set, stands for the namespace's nftables (tests give an
	// nft.Fake); by default the proxier talks to NetNS's through an
	// nft.Conn with a session.
	NFT nft.Interface
	// OnRepair, when set, is told what a full Sync (Desired.Full)
	// found changed in the kernel's table by someone else and put back:
	// one entry per chain, set or element (the agent counts them).
	OnRepair func(objects []string)
}

// Proxier is the nftables proxy backend. It remembers what it programmed
// and sends only the difference, one atomic transaction per Sync.
type Proxier struct {
	opts Options

	mu sync.Mutex
	// cur is what the kernel holds; nil when unknown (before the first
	// Sync, after a failed one, after Cleanup): the next Sync replaces the
	// table whole.
	cur *Ruleset
	// conn is the namespace's nftables (nil without a namespace).
	conn nft.Interface
	// run applies a transaction through conn; tests wrap it.
	run func(ctx context.Context, tx *nft.Transaction) error
	// adopted is the table an earlier proxier left in the kernel (an
	// agent before a restart), read by the first Sync; adoptTried says it
	// was looked for.
	adopted    *Ruleset
	adoptTried bool
	// gen is the namespace's nftables generation at which the kernel's
	// table was last known to be cur (genOK): while it stays the same, a
	// full Sync need not read the table back to look for drift.
	gen   uint32
	genOK bool
}

var _ proxy.Backend = (*Proxier)(nil)

// New returns a Proxier; it does nothing until Sync.
func New(opts Options) *Proxier {
	p := &Proxier{opts: opts, conn: opts.NFT}
	if p.conn == nil && opts.NetNS != nil {
		p.conn = nft.New(opts.NetNS, nft.WithSession())
	}
	p.run = p.apply
	return p
}

// Mode is the proxy mode's name.
const Mode = "nftables"

// Mode is "nftables".
func (p *Proxier) Mode() string { return Mode }

var errNoNetNS = errors.New("nftables proxier: no network namespace")

// Close stops the helper process the proxier keeps for incremental
// updates. The rules stay; a later Sync starts it again.
func (p *Proxier) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.conn.(*nft.Conn); ok {
		return c.Close()
	}
	return nil
}

// Sync makes the table implement d. The first Sync adopts the table an
// earlier proxier left (sending only the difference); without one, and
// after a failure, it replaces the table in one transaction; later ones
// send only what changed, for the ports d.Changed names (when nil, the
// difference of the whole table). A Sync that changes nothing sends
// nothing. A full one (d.Full) also checks the kernel's copy for drift.
// When nft fails, the kernel keeps the previous rules and the next Sync
// starts over with a replace.
func (p *Proxier) Sync(ctx context.Context, d *proxy.Desired) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cur == nil && !p.adoptTried {
		p.adoptTried = true
		p.adopted = p.adopt(ctx, d)
	}
	var drift []string
	if p.cur != nil && d.Full() {
		var err error
		if drift, err = p.checkKernel(ctx, d); err != nil {
			return err
		}
	}
	t, next := p.plan(d)
	if t.Empty() {
		p.cur = next
		return nil
	}
	g0, err0 := p.generation()
	if err := p.run(ctx, t.nft()); err != nil {
		p.cur, p.genOK = nil, false
		var nerr *nft.Error
		if errors.As(err, &nerr) && len(nerr.Labels) > 0 {
			return fmt.Errorf("sync service %s: %w", strings.Join(nerr.Labels, ", "), err)
		}
		return fmt.Errorf("sync table %s %s: %w", Family, Table, err)
	}
	p.cur = next
	// The table is known to be next when this transaction was the only
	// one since it was last known (or replaced it whole).
	g1, err1 := p.generation()
	p.genOK = err0 == nil && err1 == nil && g1 == g0+1 && (t.Replace != nil || p.genOK && g0 == p.gen)
	p.gen = g1
	if len(drift) > 0 && p.opts.OnRepair != nil {
		p.opts.OnRepair(drift)
	}
	return nil
}
