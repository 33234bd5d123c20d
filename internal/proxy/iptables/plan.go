package iptables

import (
	"context"
	"fmt"
	"github.com/kdive/kdive/internal/xtables"
	"strings"

	"github.com/kdive/kdive/internal/model"
)

// plan is what one Sync sends: chains to write (create or flush and
// refill), chains to delete and extra lines (hook inserts), per table.
type plan struct {
	// top are shared chains to write; svc are service ports' chains to
	// write (all in nat), one group per port.
	top   map[Table][]*Chain
	svc   [][]*Chain
	del   map[Table][]string
	extra map[Table][]string
	// hash is the text hash of each written chain, for the next Sync.
	hash map[chainKey]uint64
	// full: the plan rewrites everything (the first Sync, a resync).
	full bool
	// fresh: the nat table holds (almost) no kdive chains yet.
	fresh bool
	// saved is iptables-save as a full plan read it (nil for a partial
	// one): the snapshot a rollback returns to.
	saved map[Table]*xtables.SavedTable
}

func newPlan(full bool) *plan {
	return &plan{
		top: map[Table][]*Chain{}, del: map[Table][]string{}, extra: map[Table][]string{},
		hash: map[chainKey]uint64{}, full: full,
	}
}

func (pl *plan) empty() bool {
	for _, t := range tables {
		if len(pl.top[t]) > 0 || len(pl.del[t]) > 0 || len(pl.extra[t]) > 0 {
			return false
		}
	}
	return len(pl.svc) == 0
}

func (pl *plan) counts() (chains, rules, deleted int) {
	for _, t := range tables {
		for _, c := range pl.top[t] {
			chains++
			rules += len(c.Rules)
		}
		deleted += len(pl.del[t])
	}
	for _, g := range pl.svc {
		for _, c := range g {
			chains++
			rules += len(c.Rules)
		}
	}
	return chains, rules, deleted
}

// Batching. iptables-nft-restore keeps the chains a transaction names in
// a sorted linked list (its cost grows with the square of a transaction's
// size: 1,000 services × 10 endpoints in one transaction take 3.5 s of
// strcmp), and each transaction costs the kernel time in proportion to
// the whole table (nf_tables_commit and nft_table_validate walk every
// chain). So large writes go as several COMMITs of about blockRules rules,
// at most processBlocks of them per iptables-restore process (a process
// also keeps a hash of every chain name it saw, with 512 buckets, that
// every rule's target lookup walks).
//
// Legacy iptables replaces the whole table on every COMMIT, so a table
// is one transaction; but libiptc and libxtables have the same
// per-process costs that grow with the square of the chains created, so
// a first sync into an empty table goes as processes of about
// legacyProcessRules rules each (10,000 services × 10 endpoints: 10 s in
// one process, 6.7 s in three). Into a full table that would cost a
// whole-table replace per process, and it stays one.
const (
	blockRules         = 1000
	processBlocks      = 12
	legacyProcessRules = 110000
)

// inputs renders the plan as iptables-restore inputs, run in order.
// written, when set, sees each chain's rule lines as written.
func (pl *plan) inputs(f Flavour, written func(*Chain, string)) []string {
	svcRules := 0
	for _, g := range pl.svc {
		for _, c := range g {
			svcRules += len(c.Rules)
		}
	}
	perBlock, perProcess := 0, 0
	switch {
	case f == FlavourNFT && svcRules > blockRules:
		perBlock, perProcess = blockRules, processBlocks
	case f == FlavourLegacy && pl.fresh && svcRules > legacyProcessRules:
		perBlock, perProcess = legacyProcessRules, 1
	default:
		var b strings.Builder
		for _, t := range tables {
			write := pl.top[t]
			if t == TableNAT {
				for _, g := range pl.svc {
					write = append(write, g...)
				}
			}
			writeTable(&b, t, write, pl.del[t], pl.extra[t], written)
		}
		return []string{b.String()}
	}
	var out []string
	var b strings.Builder
	// Service chains jump to KUBE-MARK-MASQ: it goes in the first block;
	// the other shared chains, which jump to service chains, last.
	var block, rest []*Chain
	for _, c := range pl.top[TableNAT] {
		if c.Name == chainMarkMasq {
			block = append(block, c)
		} else {
			rest = append(rest, c)
		}
	}
	blocks, rules := 0, 0
	flush := func() {
		writeTable(&b, TableNAT, block, nil, nil, written)
		block, rules = block[:0], 0
		if blocks++; blocks == perProcess {
			out = append(out, b.String())
			b.Reset()
			blocks = 0
		}
	}
	for _, g := range pl.svc {
		if rules >= perBlock {
			flush()
		}
		block = append(block, g...)
		for _, c := range g {
			rules += len(c.Rules)
		}
	}
	// The last block goes with the shared chains, in one transaction
	// (for legacy, one whole-table replace less).
	for _, t := range tables {
		write := pl.top[t]
		if t == TableNAT {
			write = append(block, rest...)
		}
		writeTable(&b, t, write, pl.del[t], pl.extra[t], written)
	}
	return append(out, b.String())
}

// planFull restores every chain whose rules differ from what iptables-save
// shows, deletes kdive chains that are not wanted and inserts the jumps
// from the built-in chains that are missing.
func (p *Proxier) planFull(ctx context.Context, rs *Ruleset) (*plan, error) {
	out, err := xtables.Save(ctx, p.run, p.flavour, "")
	if err != nil {
		return nil, fmt.Errorf("read iptables: %w", err)
	}
	cur := parseSave(out)
	pl := newPlan(true)
	pl.saved = map[Table]*xtables.SavedTable{}
	for _, t := range tables {
		pl.saved[t] = cur[t]
	}
	want := map[chainKey]bool{}
	// A chain that holds what it should is left alone (after a restart, or
	// the periodic resync, that is nearly all of them: iptables-nft would
	// otherwise commit the whole table again, batch by batch, each commit
	// validating everything hooked: 77 s at 10k services). Hashes of the
	// chains written are taken as inputs writes them.
	intact := func(c *Chain) bool {
		st := cur[c.Table]
		if st == nil || !st.Declares(c.Name) || !c.sameAsSaved(st.Rules[c.Name]) {
			return false
		}
		pl.hash[chainKey{c.Table, c.Name}] = p.hashOf(c)
		return true
	}
	for _, c := range rs.Top {
		want[chainKey{c.Table, c.Name}] = true
		if !intact(c) {
			pl.top[c.Table] = append(pl.top[c.Table], c)
		}
	}
	for _, sc := range rs.Services {
		var write []*Chain
		for _, c := range sc.Chains {
			want[chainKey{c.Table, c.Name}] = true
			if !intact(c) {
				write = append(write, c)
			}
		}
		if len(write) > 0 {
			pl.svc = append(pl.svc, write)
		}
	}
	pl.fresh = cur[TableNAT] == nil || len(cur[TableNAT].Order) < 1000
	for _, t := range tables {
		st := cur[t]
		if st != nil {
			for _, name := range ours(st, t) {
				if !want[chainKey{t, name}] {
					pl.del[t] = append(pl.del[t], name)
				}
			}
		}
		for _, hc := range rs.Hooks {
			if hc.Table != t {
				continue
			}
			for i := len(hc.Rules) - 1; i >= 0; i-- {
				r := &hc.Rules[i]
				if st == nil || !hasJump(st, hc.Name, r.Jump) {
					var b strings.Builder
					r.appendTo(&b, "-I", hc.Name+" 1")
					pl.extra[t] = append(pl.extra[t], b.String())
				}
			}
		}
	}
	return pl, nil
}

// planPartial writes the chains whose text changed since the last Sync
// and deletes the ones that are gone. Ports that render reused from the
// previous Ruleset are skipped without looking.
func (p *Proxier) planPartial(rs *Ruleset) *plan {
	pl := newPlan(false)
	old := make(map[model.ServicePortName]*ServiceChains, len(p.prev.Services))
	for _, sc := range p.prev.Services {
		old[sc.Name] = sc
	}
	check := func(c *Chain) bool {
		k := chainKey{c.Table, c.Name}
		h := p.hashOf(c)
		if cur, ok := p.applied[k]; ok && cur == h {
			return false
		}
		pl.hash[k] = h
		return true
	}
	same := map[*Chain]bool{}
	for _, c := range p.prev.Top {
		same[c] = true
	}
	for _, c := range rs.Top {
		if !same[c] && check(c) {
			pl.top[c.Table] = append(pl.top[c.Table], c)
		}
	}
	for _, sc := range rs.Services {
		prev := old[sc.Name]
		delete(old, sc.Name)
		if prev == sc {
			continue
		}
		var write []*Chain
		names := map[string]bool{}
		for _, c := range sc.Chains {
			names[c.Name] = true
			if check(c) {
				write = append(write, c)
			}
		}
		if len(write) > 0 {
			pl.svc = append(pl.svc, write)
		}
		if prev != nil {
			for _, c := range prev.Chains {
				if !names[c.Name] {
					pl.del[TableNAT] = append(pl.del[TableNAT], c.Name)
				}
			}
		}
	}
	for _, sc := range p.prev.Services {
		if old[sc.Name] != nil { // removed
			for _, c := range sc.Chains {
				pl.del[TableNAT] = append(pl.del[TableNAT], c.Name)
			}
		}
	}
	return pl
}
