package iptables

import (
	"strings"
)

// saved is what iptables-save printed, per table: the chains and, for each
// chain, its rules (the text after "-A CHAIN ").
type saved map[Table]*savedTable

type savedTable struct {
	chains map[string]bool
	order  []string
	rules  map[string][]string
}

var builtinChains = map[string]bool{
	"PREROUTING": true, "INPUT": true, "FORWARD": true, "OUTPUT": true, "POSTROUTING": true,
}

// parseSave reads iptables-save output (either flavour).
func parseSave(out string) saved {
	s := saved{}
	var cur *savedTable
	for _, line := range strings.Split(out, "\n") {
		switch {
		case strings.HasPrefix(line, "*"):
			cur = &savedTable{chains: map[string]bool{}, rules: map[string][]string{}}
			s[Table(line[1:])] = cur
		case cur == nil:
		case strings.HasPrefix(line, ":"):
			name, _, _ := strings.Cut(line[1:], " ")
			if !cur.chains[name] {
				cur.chains[name] = true
				cur.order = append(cur.order, name)
			}
		case strings.HasPrefix(line, "-A "):
			chain, rule, _ := strings.Cut(line[3:], " ")
			cur.rules[chain] = append(cur.rules[chain], rule)
		}
	}
	return s
}

// jumpTarget is the chain or target a saved rule jumps (or goes) to.
func jumpTarget(rule string) string {
	f := strings.Fields(rule)
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "-j" || f[i] == "-g" || f[i] == "--jump" || f[i] == "--goto" {
			return f[i+1]
		}
	}
	return ""
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
func (st *savedTable) ours(t Table) []string {
	keep := map[string]bool{}
	var queue []string
	for chain, rules := range st.rules {
		if ownedIn(t, chain) || builtinChains[chain] {
			continue
		}
		for _, r := range rules {
			if j := jumpTarget(r); ownedIn(t, j) && !keep[j] {
				keep[j] = true
				queue = append(queue, j)
			}
		}
	}
	for len(queue) > 0 {
		c := queue[0]
		queue = queue[1:]
		for _, r := range st.rules[c] {
			if j := jumpTarget(r); ownedIn(t, j) && !keep[j] {
				keep[j] = true
				queue = append(queue, j)
			}
		}
	}
	var out []string
	for _, name := range st.order {
		if ownedIn(t, name) && !keep[name] {
			out = append(out, name)
		}
	}
	return out
}

// hookRules are the rules in built-in chains that jump to kdive's chains,
// as "-A CHAIN rule" lines.
func (st *savedTable) hookRules(t Table) []string {
	var out []string
	for _, chain := range []string{"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"} {
		for _, r := range st.rules[chain] {
			if ownedIn(t, jumpTarget(r)) {
				out = append(out, "-A "+chain+" "+r)
			}
		}
	}
	return out
}

// hasJump says whether built-in chain has a rule jumping to target.
func (st *savedTable) hasJump(chain, target string) bool {
	for _, r := range st.rules[chain] {
		if jumpTarget(r) == target {
			return true
		}
	}
	return false
}
