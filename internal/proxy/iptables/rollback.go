package iptables

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/kdive/kdive/internal/xtables"
)

// Rollback. iptables-restore commits each table of its input as one
// transaction (at its COMMIT line), and the kernel makes each transaction
// atomic, not their sequence: when one fails, the ones before it stay
// committed. A Sync sends one transaction per table it writes, and a
// batched one (see plan.inputs) several per table in several processes.
// So before a Sync that sends more than one transaction, the tables of all
// but the last are read (a full Sync has read them already: plan.saved);
// the last needs nothing, since nothing runs after it. When a restore
// fails, the tables are read again and what differs from the snapshot is
// put back in one transaction per table: each chain the plan writes or
// deletes gets its previous rules (created again if the Sync deleted it),
// a chain the Sync created is deleted, and a jump from a built-in chain to
// one of kdive's that the Sync inserted is deleted. Comparing with the
// kernel, rather than trusting the error to say which transaction failed,
// makes it right also when the process was killed (the context ended)
// after committing some of its transactions.
//
// What it cannot put back: a table that did not exist before the Sync
// stays (with its built-in chains, empty, policy ACCEPT); the counters of
// the rules it rewrites start at zero; route_localnet and the other
// flavour's cleanup (leaveOtherFlavour) are not iptables state of this
// flavour and stay. It fails, and Sync says so, when the kernel refuses
// the rollback (someone made a rule jump to a chain this Sync created,
// between the commit and the rollback) or the tables cannot be read; and
// there is none when the agent dies between two transactions (the next
// agent's first Sync, a full one, completes the change).

// rollbackTimeout bounds a rollback, which runs even when the Sync's
// context ended.
const rollbackTimeout = 30 * time.Second

// snapshot is each table a rollback may put back, as iptables-save showed
// it before the Sync; a nil table did not exist.
type snapshot map[Table]*xtables.SavedTable

// transactions lists the table of each transaction in inputs, in order.
func transactions(inputs []string) []Table {
	var out []Table
	for _, in := range inputs {
		for line := range strings.Lines(in) {
			if line[0] == '*' {
				out = append(out, Table(strings.TrimSpace(line[1:])))
			}
		}
	}
	return out
}

// snapshotFor reads what a rollback of inputs needs: the tables of every
// transaction but the last. nil when there is one transaction (atomic).
func (p *Proxier) snapshotFor(ctx context.Context, pl *plan, inputs []string) (snapshot, error) {
	tx := transactions(inputs)
	if len(tx) < 2 {
		return nil, nil
	}
	snap := snapshot{}
	for _, t := range tx[:len(tx)-1] {
		if _, ok := snap[t]; ok {
			continue
		}
		if pl.saved != nil {
			snap[t] = pl.saved[t]
			continue
		}
		out, err := xtables.Save(ctx, p.run, p.flavour, string(t))
		if err != nil {
			return nil, fmt.Errorf("read iptables before a sync of %d transactions: %w", len(tx), err)
		}
		snap[t] = parseSave(out)[t]
	}
	return snap, nil
}

// rollback puts back what the plan changed in the snapshot's tables; it
// reports whether it wrote anything.
func (p *Proxier) rollback(ctx context.Context, pl *plan, snap snapshot) (bool, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
	defer cancel()
	var b strings.Builder
	for _, t := range tables {
		old, ok := snap[t]
		if !ok {
			continue
		}
		out, err := xtables.Save(ctx, p.run, p.flavour, string(t))
		if err != nil {
			return false, fmt.Errorf("read %s: %w", t, err)
		}
		writeUndo(&b, t, pl.touched(t), old, parseSave(out)[t])
	}
	if b.Len() == 0 {
		return false, nil
	}
	if _, err := p.run(ctx, b.String(), p.flavour.Restore(), "-w", "--noflush"); err != nil {
		return false, fmt.Errorf("restore: %w", err)
	}
	return true, nil
}

// touched are the chains the plan writes or deletes in table t.
func (pl *plan) touched(t Table) []string {
	var out []string
	for _, c := range pl.top[t] {
		out = append(out, c.Name)
	}
	if t == TableNAT {
		for _, g := range pl.svc {
			for _, c := range g {
				out = append(out, c.Name)
			}
		}
	}
	return append(out, pl.del[t]...)
}

// writeUndo writes the transaction that turns table t from now back into
// old for the chains named and for kdive's jumps from built-in chains
// (nothing when they are the same).
func writeUndo(b *strings.Builder, t Table, chains []string, old, now *xtables.SavedTable) {
	var decl, add, del, drop []string
	seen := map[string]bool{}
	for _, name := range chains {
		if seen[name] {
			continue
		}
		seen[name] = true
		had, has := old.Declares(name), now.Declares(name)
		switch {
		case had && has && slices.Equal(old.Rules[name], now.Rules[name]):
		case had:
			decl = append(decl, name)
			add = append(add, old.Lines(name)...)
		case has:
			decl = append(decl, name)
			drop = append(drop, name)
		}
	}
	for _, chain := range []string{"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"} {
		if now == nil {
			break
		}
		had := map[string]int{}
		if old != nil {
			for _, r := range old.Rules[chain] {
				had[r]++
			}
		}
		for _, r := range now.Rules[chain] {
			if had[r] > 0 {
				had[r]--
				continue
			}
			if ownedIn(t, xtables.JumpTarget(r)) {
				del = append(del, "-D "+chain+" "+r)
			}
		}
	}
	if len(decl) == 0 && len(del) == 0 {
		return
	}
	b.WriteString("*" + string(t) + "\n")
	for _, name := range decl {
		writeChainLine(b, name)
	}
	for _, l := range append(add, del...) {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	for _, name := range drop {
		b.WriteString("-X " + name + "\n")
	}
	b.WriteString("COMMIT\n")
}
