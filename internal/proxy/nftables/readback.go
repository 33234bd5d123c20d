package nftables

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"

	"github.com/kdive/kdive/internal/kernel/nft"
	"github.com/kdive/kdive/internal/proxy"
)

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
