package nftables

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/nft"
	"github.com/kdive/kdive/internal/model"
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
	// OnRepair, when set, is told what a full Sync (Desired.Changed nil)
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

// apply applies a transaction to the namespace's table.
func (p *Proxier) apply(ctx context.Context, tx *nft.Transaction) error {
	if p.conn == nil {
		return errNoNetNS
	}
	return p.conn.Run(ctx, tx)
}

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
// after a failure, it replaces the table in one transaction; later ones send only
// what changed, for the ports d.Changed names (when nil, for the ports
// that differ from the last Sync's). A Sync that changes nothing sends
// nothing. When nft fails, the kernel
// keeps the previous rules and the next Sync starts over with a replace.
func (p *Proxier) Sync(ctx context.Context, d *proxy.Desired) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cur == nil && !p.adoptTried {
		p.adoptTried = true
		p.adopted = p.adopt(ctx, d)
	}
	var drift []string
	if p.cur != nil && d.Changed == nil {
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

// checkKernel is a full Sync's check for drift. When no nftables
// transaction happened since the table was last known to be cur (the
// namespace's generation), there is none. Otherwise it reads the table
// back and compares it with what this proxier programmed (the affinity
// sets' elements aside); when someone else changed it, it forgets what it
// programmed, so that plan sends the difference from the table as read
// (or replaces the table), and returns what differed. Reading costs about
// what adopting a table on restart does.
func (p *Proxier) checkKernel(ctx context.Context, d *proxy.Desired) ([]string, error) {
	if p.reader() == nil {
		return nil, nil
	}
	g, gerr := p.generation()
	if gerr == nil && p.genOK && g == p.gen {
		return nil, nil
	}
	p.genOK = false
	tbl := "table " + Family + " " + Table
	k, err := p.read(ctx, p.portNames(d))
	switch {
	case errors.Is(err, os.ErrNotExist):
		p.cur = nil
		return []string{tbl}, nil
	case errors.As(err, new(*exec.Error)) || errors.As(err, new(*exec.ExitError)) || ctx.Err() != nil:
		return nil, fmt.Errorf("check %s: %w", tbl, err)
	case err != nil: // a shape kdive never writes
		p.cur = nil
		return []string{tbl + " (" + err.Error() + ")"}, nil
	}
	t, ok := diff(k, p.cur, nil)
	if ok && t.Empty() {
		p.gen, p.genOK = g, gerr == nil
		return nil, nil
	}
	p.cur = nil
	if !ok {
		return []string{tbl + " (a set declaration or base chain changed)"}, nil
	}
	// Elements are put back by the difference (which keeps affinity
	// clients); chains, rules and sets by replacing the table: nft 1.0.6
	// refuses to add a rule looking up an existing map by `th dport .
	// numgen` ("conflicting protocols specified: ip vs. th").
	if len(t.AddChains)+len(t.AddSets)+len(t.FlushChains)+len(t.SetRules)+len(t.DelSets)+len(t.DelChains) == 0 {
		p.adopted = k
		p.gen, p.genOK = g, gerr == nil // the difference starts from the table as read
	}
	return t.objects(), nil
}

// generation is the namespace's nftables generation.
func (p *Proxier) generation() (uint32, error) {
	if p.conn == nil {
		return 0, errNoNetNS
	}
	return p.conn.Generation()
}

// jsonLister reads a table as nft's JSON: an nft.Conn does, a Fake not
// (the proxier then never reads its table back).
type jsonLister interface {
	ListJSON(ctx context.Context, t nft.Table) ([]byte, error)
}

// reader is what reads the table back, or nil.
func (p *Proxier) reader() jsonLister {
	r, _ := p.conn.(jsonLister)
	return r
}

// read reads the table from the kernel, without the affinity sets'
// elements (clients the kernel added itself), naming the ports of
// shortened comments as known says. A missing table is os.ErrNotExist.
func (p *Proxier) read(ctx context.Context, known portNames) (*Ruleset, error) {
	out, err := p.reader().ListJSON(ctx, nftTable)
	if err != nil {
		if errors.Is(err, nft.ErrNotFound) {
			return nil, fmt.Errorf("%w: %w", os.ErrNotExist, err)
		}
		return nil, err
	}
	l, err := parseListing(out)
	if err != nil {
		return nil, err
	}
	l.resolve(known)
	for _, set := range l.rs.Sets {
		if set.Kind == Clients {
			set.elems = map[mkey]*slot{}
		}
	}
	return l.rs, nil
}

// adopt reads the table an earlier proxier left (an agent restarting), so
// that the first Sync sends only what differs instead of replacing the
// table: a restart then changes nothing in the kernel, and session
// affinity survives it. The affinity sets' elements (clients the kernel
// added itself) are left out of what was read, so the difference never
// removes them. Anything unreadable (no table, a shape kdive never writes)
// means no adoption: the first Sync replaces the table as before.
// Shortened comments are resolved with d's names.
func (p *Proxier) adopt(ctx context.Context, d *proxy.Desired) *Ruleset {
	if p.reader() == nil {
		return nil
	}
	rs, err := p.read(ctx, p.portNames(d))
	if err != nil {
		return nil
	}
	return rs
}

// portNames are the names a table read back may hold in shortened
// comments: the ports of d and those programmed last (which the kernel
// still holds when d drops them).
func (p *Proxier) portNames(d *proxy.Desired) portNames {
	pn := portNames{}
	for _, sp := range d.Services {
		pn.add(sp.Name)
	}
	if p.cur != nil {
		for n := range p.cur.ports {
			pn.add(n)
		}
	}
	return pn
}

// plan computes the transaction from what is programmed to d, and the
// ruleset the kernel holds once it is applied. It may update p.cur in
// place (which Sync forgets if the transaction fails).
func (p *Proxier) plan(d *proxy.Desired) (*Transaction, *Ruleset) {
	if p.cur == nil {
		rs := Render(d)
		if k := p.adopted; k != nil {
			p.adopted = nil
			if t, ok := diff(k, rs, nil); ok {
				return t, rs
			}
		}
		return &Transaction{Replace: rs}, rs
	}
	if !globalsOf(d).equal(p.cur.glob) {
		rs := Render(d)
		if t, ok := diff(p.cur, rs, nil); ok {
			return t, rs
		}
		return &Transaction{Replace: rs}, rs
	}
	changed := d.Changed
	if changed == nil {
		changed = p.cur.changedPorts(d)
	}
	rs, rec := p.cur, newRecorder()
	names := keysOf(changed)
	slices.SortFunc(names, model.ServicePortName.Compare)
	for _, name := range names {
		rs.removePort(name, rec)
		if sp := findPort(d, name); sp != nil {
			rs.addPort(sp, rec)
		}
	}
	if t, ok := diff(recorded{r: rec, cur: rs}, rs, rec); ok {
		return t, rs
	}
	rs = Render(d)
	return &Transaction{Replace: rs}, rs
}

// findPort finds a port in d.Services, which are sorted by name.
func findPort(d *proxy.Desired, name model.ServicePortName) *proxy.Port {
	i, ok := slices.BinarySearchFunc(d.Services, name, func(p *proxy.Port, n model.ServicePortName) int { return p.Name.Compare(n) })
	if !ok {
		return nil
	}
	return d.Services[i]
}

// objects names what a transaction from the kernel's table to the
// programmed one touches, once each: chains and sets that were missing or
// extra, chains whose rules differed, elements missing, extra or changed.
func (t *Transaction) objects() []string {
	seen := map[string]bool{}
	var out []string
	add := func(s string) {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	for _, c := range t.AddChains {
		add("chain " + c.Name)
	}
	for _, s := range t.AddSets {
		add(s.keyword() + " " + s.Name)
	}
	for _, ses := range [][]SetElems{t.DelElems, t.AddElems} {
		for _, se := range ses {
			if seen[se.Set.keyword()+" "+se.Set.Name] {
				continue // the set was missing: it counts once
			}
			for _, e := range se.Elems {
				add("element " + se.Set.Name + " { " + e.keyString(se.Set.Kind) + " }")
			}
		}
	}
	for _, c := range t.SetRules {
		if !seen["chain "+c.Name] {
			add("rules of chain " + c.Name)
		}
	}
	for _, s := range t.DelSets {
		add(s.keyword() + " " + s.Name)
	}
	for _, c := range t.DelChains {
		add("chain " + c)
	}
	return out
}
