package iptables

import (
	"github.com/kdive/kdive/internal/xtables"
)

var builtinChains = map[string]bool{
	"PREROUTING": true, "INPUT": true, "FORWARD": true, "OUTPUT": true, "POSTROUTING": true,
}

// parseSave reads iptables-save output (either flavour), by table.
func parseSave(out string) map[Table]*xtables.SavedTable {
	s := map[Table]*xtables.SavedTable{}
	for name, t := range xtables.ParseSave(out) {
		s[Table(name)] = t
	}
	return s
}

// ownedIn says whether kdive creates chain name in table t.
func ownedIn(t Table, name string) bool {
	for _, n := range sharedChains[t] {
		if n == name {
			return true
		}
	}
	return t == TableNAT && isServiceChain(name)
}

// ours lists kdive's chains in a saved table that can be deleted: the ones
// no foreign rule jumps to (deleting those would fail the whole restore,
// and flushing them would change someone else's rules), nor any chain
// such a kept chain jumps to.
func ours(st *xtables.SavedTable, t Table) []string {
	if st == nil {
		return nil
	}
	keep := map[string]bool{}
	var queue []string
	for chain, rules := range st.Rules {
		if ownedIn(t, chain) || builtinChains[chain] {
			continue
		}
		for _, r := range rules {
			if j := xtables.JumpTarget(r); ownedIn(t, j) && !keep[j] {
				keep[j] = true
				queue = append(queue, j)
			}
		}
	}
	for len(queue) > 0 {
		c := queue[0]
		queue = queue[1:]
		for _, r := range st.Rules[c] {
			if j := xtables.JumpTarget(r); ownedIn(t, j) && !keep[j] {
				keep[j] = true
				queue = append(queue, j)
			}
		}
	}
	var out []string
	for _, name := range st.Order {
		if ownedIn(t, name) && !keep[name] {
			out = append(out, name)
		}
	}
	return out
}

// hookRules are the rules in built-in chains that jump to kdive's chains,
// as "-A CHAIN rule" lines.
func hookRules(st *xtables.SavedTable, t Table) []string {
	if st == nil {
		return nil
	}
	var out []string
	for _, chain := range []string{"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"} {
		for _, r := range st.Rules[chain] {
			if ownedIn(t, xtables.JumpTarget(r)) {
				out = append(out, "-A "+chain+" "+r)
			}
		}
	}
	return out
}

// hasJump says whether built-in chain has a rule jumping to target.
func hasJump(st *xtables.SavedTable, chain, target string) bool {
	if st == nil {
		return false
	}
	for _, r := range st.Rules[chain] {
		if xtables.JumpTarget(r) == target {
			return true
		}
	}
	return false
}
