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
// So when a Sync that sent more than one transaction fails, it puts back
// what all but its last transaction may have changed (the last is atomic,
// and nothing runs after it), in one transaction per table: each chain
// they write or delete (each is declared in a ":CHAIN" line first) gets
// its previous rules (created again if the Sync deleted it), a chain the
// Sync created is deleted, and a jump from a built-in chain to one of
// kdive's that the Sync inserted is deleted. The undo is the same
// whichever transaction failed, so it is right also when the process was
// killed (the context ended) after committing some of its transactions.
//
// The previous rules come from what the Sync knew before writing. A full
// Sync read iptables-save already (plan.saved): its rollback reads the
// tables again and puts back what differs, hooks included. A partial Sync
// writes only where its last Sync left chains other than it wants now,
// trusting the kernel to hold what that Sync wrote (the canary tells it
// when someone flushed the tables), and reads nothing: reading the tables
// costs seconds at 10,000 services, which the fast path cannot afford. Its
// rollback writes each of those chains as the last Sync left it
// (Proxier.prev), and deletes the ones it created; a partial plan inserts
// no hooks. So a chain of kdive's that someone edited by hand since the
// last Sync comes back as kdive wrote it, as the next full Sync would do.
//
// What a rollback cannot put back: a table that did not exist before the
// Sync stays (with its built-in chains, empty, policy ACCEPT); the counters
// of the rules it rewrites start at zero; route_localnet and the other
// flavour's cleanup (leaveOtherFlavour) are not iptables state of this
// flavour and stay. It fails, and Sync says so, when the kernel refuses
// it (someone made a rule jump to a chain this Sync created, between the
// commit and the rollback), or a full Sync's tables cannot be read, or it
// runs out of rollbackTimeout; and there is none when the agent dies
// between two transactions (the next agent's first Sync, a full one,
// completes the change).

// rollbackTimeout bounds a rollback, which runs even when the Sync's
// context ended.
const rollbackTimeout = 2 * time.Minute

// undo is what a rollback needs: the Sync's inputs and, for a full Sync,
// iptables-save before it (a nil table did not exist).
type undo struct {
	inputs []string
	saved  map[Table]*xtables.SavedTable
}

// transactions lists the table of each transaction in inputs, in order
// (each starts with a "*table" line).
func transactions(inputs []string) []Table {
	var out []Table
	for _, in := range inputs {
		for i := 0; i < len(in); {
			if in[i] == '*' {
				end := strings.IndexByte(in[i:], '\n')
				if end < 0 {
					end = len(in) - i
				}
				out = append(out, Table(in[i+1:i+end]))
			}
			next := strings.Index(in[i:], "\n*")
			if next < 0 {
				break
			}
			i += next + 1
		}
	}
	return out
}

// undoFor says what a rollback of inputs needs; nil when they are one
// transaction (atomic).
func undoFor(pl *plan, inputs []string) *undo {
	if len(transactions(inputs)) < 2 {
		return nil
	}
	return &undo{inputs: inputs, saved: pl.saved}
}

// committable lists, by table, the chains that the transactions before
// the last one declare (every chain a transaction writes or deletes it
// declares first): all that a failed Sync may have committed. A table
// with a transaction there is listed even when it declares no chain (it
// may have inserted hooks).
func committable(inputs []string) map[Table][]string {
	type tx struct {
		table  Table
		chains []string
	}
	var txs []tx
	for _, in := range inputs {
		for line := range strings.Lines(in) {
			switch line[0] {
			case '*':
				txs = append(txs, tx{table: Table(strings.TrimSpace(line[1:]))})
			case ':':
				if len(txs) > 0 {
					name, _, _ := strings.Cut(line[1:], " ")
					txs[len(txs)-1].chains = append(txs[len(txs)-1].chains, name)
				}
			}
		}
	}
	out := map[Table][]string{}
	for i := 0; i+1 < len(txs); i++ {
		out[txs[i].table] = append(out[txs[i].table], txs[i].chains...)
	}
	return out
}

// rollback puts back what the transactions before the last one may have
// changed; it reports whether it wrote anything.
func (p *Proxier) rollback(ctx context.Context, u *undo) (bool, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
	defer cancel()
	var now map[Table]*xtables.SavedTable
	if u.saved != nil {
		// All tables, as planFull reads them: iptables-legacy-save asked
		// for one creates it.
		out, err := xtables.Save(ctx, p.run, p.flavour, "")
		if err != nil {
			return false, fmt.Errorf("read iptables: %w", err)
		}
		now = parseSave(out)
	}
	touched := committable(u.inputs)
	var b strings.Builder
	for _, t := range tables {
		chains, ok := touched[t]
		switch {
		case !ok:
		case u.saved == nil:
			p.writeUndoPartial(&b, t, chains)
		default:
			writeUndo(&b, t, chains, u.saved[t], now[t])
		}
	}
	if b.Len() == 0 {
		return false, nil
	}
	if _, err := p.run(ctx, b.String(), p.flavour.Restore(), "-w", "--noflush"); err != nil {
		return false, fmt.Errorf("restore: %w", err)
	}
	return true, nil
}

// writeUndoPartial writes the transaction that puts the chains named back
// as the last Sync left them (p.prev), deleting the ones it did not have.
func (p *Proxier) writeUndoPartial(b *strings.Builder, t Table, chains []string) {
	if len(chains) == 0 {
		return
	}
	b.WriteString("*" + string(t) + "\n")
	var drop []string
	seen := map[string]bool{}
	for _, name := range chains {
		if !seen[name] {
			seen[name] = true
			writeChainLine(b, name)
		}
	}
	for _, name := range chains {
		if !seen[name] {
			continue
		}
		delete(seen, name)
		if c := p.prev.Chain(t, name); c != nil {
			c.appendRules(b)
		} else {
			drop = append(drop, name)
		}
	}
	for _, name := range drop {
		b.WriteString("-X " + name + "\n")
	}
	b.WriteString("COMMIT\n")
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
