package iptables

import (
	"context"
	"errors"
	"fmt"
	"github.com/kdive/kdive/internal/xtables"
	"strings"
)

// Cleanup removes every chain kdive creates and every jump to them from
// the built-in chains, in every table, in both iptables-nft and
// iptables-legacy (a node may have switched), also when another process
// (an earlier kdive, upstream kube-proxy) created them. Other rules stay,
// and so do kdive chains a foreign rule still jumps to. A flavour whose
// tools are not installed is skipped.
func (p *Proxier) Cleanup(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.forget()
	var errs []error
	for _, f := range xtables.Flavours {
		if err := p.cleanup(ctx, f); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (p *Proxier) cleanup(ctx context.Context, f Flavour) error {
	// All tables at once: for legacy, naming a table would create it.
	out, err := xtables.Save(ctx, p.run, f, "")
	if xtables.NotInstalled(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("clean up iptables (%s): %w", f, err)
	}
	input := cleanupInput(parseSave(out))
	if input == "" {
		return nil
	}
	if _, err := p.run(ctx, input, f.Restore(), "-w", "--noflush"); err != nil {
		return fmt.Errorf("clean up iptables (%s): %w", f, err)
	}
	return nil
}

// cleanupInput is the restore input that deletes the hooks, then flushes
// and deletes kdive's chains, table by table ("" when there are none).
func cleanupInput(cur map[Table]*xtables.SavedTable) string {
	var b strings.Builder
	for _, t := range tables {
		st := cur[t]
		if st == nil {
			continue
		}
		var extra []string
		for _, h := range hookRules(st, t) {
			extra = append(extra, "-D"+strings.TrimPrefix(h, "-A"))
		}
		ours := ours(st, t)
		if len(ours) == 0 && len(extra) == 0 {
			continue
		}
		// Hooks first: a chain a built-in chain still jumps to cannot go.
		b.WriteString("*" + string(t) + "\n")
		for _, l := range extra {
			b.WriteString(l + "\n")
		}
		for _, name := range ours {
			writeChainLine(&b, name)
		}
		for _, name := range ours {
			b.WriteString("-X " + name + "\n")
		}
		b.WriteString("COMMIT\n")
	}
	return b.String()
}
