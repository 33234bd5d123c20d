package iptables

import (
	"context"
	"fmt"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/xtables"
)

// fakeIPTables stands in for the iptables tools of both flavours so Sync,
// Cleanup and flavour detection run without root. It keeps rules as the
// text it was given and, like the real tools, applies each COMMIT whole
// or not at all, refuses to delete a chain something jumps to, and fails
// -S on a missing chain with exit status 1.
type fakeIPTables struct {
	mu       sync.Mutex
	tables   map[Flavour]map[Table]*fakeTable
	restores []string // restore inputs that change something
	missing  map[Flavour]bool
	// fail makes the next restore fail on the first line containing it.
	fail string
}

type fakeTable struct {
	order []string
	set   map[string]bool
	rules map[string][]string
}

func newFakeIPTables() *fakeIPTables {
	return &fakeIPTables{tables: map[Flavour]map[Table]*fakeTable{FlavourNFT: {}, FlavourLegacy: {}}, missing: map[Flavour]bool{}}
}

func (f *fakeIPTables) table(fl Flavour, t Table) *fakeTable {
	ft := f.tables[fl][t]
	if ft == nil {
		ft = &fakeTable{set: map[string]bool{}, rules: map[string][]string{}}
		for _, c := range []string{"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"} {
			ft.add(c)
		}
		f.tables[fl][t] = ft
	}
	return ft
}

func (ft *fakeTable) clone() *fakeTable {
	c := &fakeTable{order: slices.Clone(ft.order), set: map[string]bool{}, rules: map[string][]string{}}
	for k, v := range ft.rules {
		c.rules[k] = slices.Clone(v)
	}
	for k := range ft.set {
		c.set[k] = true
	}
	return c
}

func (ft *fakeTable) has(chain string) bool { return ft.set[chain] }

func (ft *fakeTable) add(chain string) {
	ft.order = append(ft.order, chain)
	ft.set[chain] = true
}

func (ft *fakeTable) remove(chain string) {
	ft.order = slices.DeleteFunc(ft.order, func(c string) bool { return c == chain })
	delete(ft.set, chain)
	delete(ft.rules, chain)
}

// exitErr is what the real tools' failures look like to callers.
func exitErr(code int) error {
	return exec.Command("sh", "-c", "exit "+strconv.Itoa(code)).Run()
}

// Proxier returns a Proxier whose tools are this fake.
func (f *fakeIPTables) Proxier(fl Flavour) *Proxier {
	p := New(Options{Flavour: fl})
	p.run = f.run
	p.sysctl = func(string, string) error { return nil }
	p.tableInfo = func(t Table) (kernel.LegacyTableInfo, error) {
		f.mu.Lock()
		defer f.mu.Unlock()
		ft := f.table(FlavourLegacy, t)
		n, size := 0, 0
		for _, rules := range ft.rules {
			n += len(rules)
			for _, r := range rules {
				size += len(r)
			}
		}
		return kernel.LegacyTableInfo{Entries: uint32(len(ft.order) + n), Size: uint32(size)}, nil
	}
	return p
}

func (f *fakeIPTables) run(ctx context.Context, stdin, name string, args ...string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fl, kind, ok := parseTool(name)
	if !ok || f.missing[fl] {
		return "", fmt.Errorf("%s: %w", name, &exec.Error{Name: name, Err: exec.ErrNotFound})
	}
	switch kind {
	case "save":
		if len(args) == 2 && args[0] == "-t" {
			return f.save(fl, Table(args[1])), nil
		}
		return f.save(fl, ""), nil
	case "restore":
		return f.restore(fl, stdin)
	}
	// iptables -w -t T -F / -X
	t := Table(args[slices.Index(args, "-t")+1])
	ft := f.table(fl, t)
	switch args[len(args)-1] {
	case "-F":
		for c := range ft.rules {
			delete(ft.rules, c)
		}
	case "-X":
		for _, c := range slices.Clone(ft.order) {
			if !builtinChains[c] {
				ft.remove(c)
			}
		}
	}
	return "", nil
}

func parseTool(name string) (Flavour, string, bool) {
	rest, ok := strings.CutPrefix(name, "iptables-")
	if !ok {
		return "", "", false
	}
	fl, kind, _ := strings.Cut(rest, "-")
	return Flavour(fl), kind, Flavour(fl).Valid()
}

func (f *fakeIPTables) save(fl Flavour, only Table) string {
	var b strings.Builder
	for _, t := range tables {
		ft := f.tables[fl][t]
		if ft == nil || only != "" && t != only {
			continue
		}
		b.WriteString("*" + string(t) + "\n")
		for _, c := range ft.order {
			policy := "-"
			if builtinChains[c] {
				policy = "ACCEPT"
			}
			fmt.Fprintf(&b, ":%s %s [0:0]\n", c, policy)
		}
		for _, c := range ft.order {
			for _, r := range ft.rules[c] {
				fmt.Fprintf(&b, "-A %s %s\n", c, r)
			}
		}
		b.WriteString("COMMIT\n")
	}
	return b.String()
}

// restore applies an iptables-restore --noflush input.
func (f *fakeIPTables) restore(fl Flavour, in string) (string, error) {
	var out strings.Builder
	var t Table
	var work *fakeTable
	changes := false
	for n, line := range strings.Split(in, "\n") {
		fail := func() (string, error) {
			return "", fmt.Errorf("%w: iptables-restore: line %d failed", exitErr(1), n+1)
		}
		if f.fail != "" && strings.Contains(line, f.fail) {
			f.fail = ""
			return fail()
		}
		switch {
		case line == "":
		case strings.HasPrefix(line, "*"):
			t = Table(line[1:])
			work = f.table(fl, t).clone()
		case line == "COMMIT":
			f.tables[fl][t] = work
		case strings.HasPrefix(line, ":"):
			name, _, _ := strings.Cut(line[1:], " ")
			changes = true
			if !work.has(name) {
				work.add(name)
			}
			if !builtinChains[name] {
				work.rules[name] = nil
			}
		default:
			f := strings.Fields(line)
			cmd, chain := f[0], f[1]
			rule := strings.TrimSpace(strings.TrimPrefix(strings.TrimPrefix(line, cmd), " "+chain))
			if !work.has(chain) {
				return fail()
			}
			switch cmd {
			case "-S":
				out.WriteString("-N " + chain + "\n")
				for _, r := range work.rules[chain] {
					out.WriteString("-A " + chain + " " + r + "\n")
				}
				continue
			case "-A":
				if j := xtables.JumpTarget(rule); isChainTarget(j) && !work.has(j) {
					return fail()
				}
				work.rules[chain] = append(work.rules[chain], rule)
			case "-I":
				pos, r, _ := strings.Cut(rule, " ")
				i, _ := strconv.Atoi(pos)
				work.rules[chain] = slices.Insert(work.rules[chain], i-1, r)
			case "-D":
				i := slices.Index(work.rules[chain], rule)
				if i < 0 {
					return fail()
				}
				work.rules[chain] = slices.Delete(work.rules[chain], i, i+1)
			case "-X":
				if len(work.rules[chain]) > 0 || work.referenced(chain) {
					return fail()
				}
				work.remove(chain)
			default:
				return fail()
			}
			changes = true
		}
	}
	if changes {
		f.restores = append(f.restores, in)
	}
	return out.String(), nil
}

func (ft *fakeTable) referenced(chain string) bool {
	for _, rules := range ft.rules {
		for _, r := range rules {
			if xtables.JumpTarget(r) == chain {
				return true
			}
		}
	}
	return false
}

// sent returns and forgets the restores that changed something.
func (f *fakeIPTables) sent() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.restores
	f.restores = nil
	return s
}

// chains lists a table's chains.
func (f *fakeIPTables) chains(fl Flavour, t Table) map[string]bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	m := map[string]bool{}
	if ft := f.tables[fl][t]; ft != nil {
		for _, c := range ft.order {
			m[c] = true
		}
	}
	return m
}
