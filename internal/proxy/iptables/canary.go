package iptables

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"

	"github.com/kdive/kdive/internal/kernel"
)

// canaryOK says whether the canary rule is still in every table. One
// iptables-restore lists the canary chains (-S); a missing chain fails it.
// Legacy tables whose size did not change since the canary was last seen
// are not listed.
func (p *Proxier) canaryOK(ctx context.Context) (bool, error) {
	var check []Table
	infos := map[Table]kernel.LegacyTableInfo{}
	for _, t := range tables {
		if p.flavour == FlavourLegacy {
			info, err := p.tableInfo(t)
			if err == nil {
				if seen, ok := p.seen[t]; ok && seen == info {
					continue // untouched since the canary was there
				}
				infos[t] = info
			}
		}
		check = append(check, t)
	}
	if len(check) == 0 {
		return true, nil
	}
	var b strings.Builder
	for _, t := range check {
		fmt.Fprintf(&b, "*%s\n-S %s\nCOMMIT\n", t, ChainCanary)
	}
	out, err := p.run(ctx, b.String(), p.flavour.Restore(), "-w", "--noflush")
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() == 1 {
			return false, nil // a canary chain is gone
		}
		return false, fmt.Errorf("check canary: %w", err)
	}
	if strings.Count(out, "-A "+ChainCanary+" ") < len(check) {
		return false, nil // a chain is there, its rule is not
	}
	if p.seen != nil {
		for t, info := range infos {
			p.seen[t] = info
		}
	}
	return true, nil
}

// remember notes the legacy tables' sizes right after a restore that
// left the canary in place.
func (p *Proxier) remember() {
	if p.flavour != FlavourLegacy {
		return
	}
	p.seen = map[Table]kernel.LegacyTableInfo{}
	for _, t := range tables {
		if info, err := p.tableInfo(t); err == nil {
			p.seen[t] = info
		}
	}
}
