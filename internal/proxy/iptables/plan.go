package iptables

import (
	"strings"
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
func (pl *plan) inputs(f Flavour) []string {
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
			writeTable(&b, t, write, pl.del[t], pl.extra[t])
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
		writeTable(&b, TableNAT, block, nil, nil)
		block, rules = block[:0], 0
		if blocks++; blocks == perProcess {
			out = append(out, b.String())
			b.Reset()
			blocks = 0
		}
	}
	for _, g := range pl.svc {
		block = append(block, g...)
		for _, c := range g {
			rules += len(c.Rules)
		}
		if rules >= perBlock {
			flush()
		}
	}
	if len(block) > 0 {
		flush()
	}
	if b.Len() > 0 {
		out = append(out, b.String())
		b.Reset()
	}
	for _, t := range tables {
		write := pl.top[t]
		if t == TableNAT {
			write = rest
		}
		writeTable(&b, t, write, pl.del[t], pl.extra[t])
	}
	if b.Len() > 0 {
		out = append(out, b.String())
	}
	return out
}
