package ipvs

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/xtables"
)

// The iptables side of the mode goes through iptables-save and
// iptables-restore --noflush inside the node's namespace (kernel.NetNS.Run):
// read what is there, restore only the tables whose chains differ. The
// chains are declared in the restore input, which flushes and rewrites
// them atomically per table; the jumps from built-in chains are inserted
// only when missing, so other software's rules there stay untouched.

// iptablesFlavour picks the back end: the one forced by Options.Flavour,
// else the one the node already uses (xtables.Detect, this mode's
// firewall chain telling an earlier run's), decided once per Proxier.
func (p *Proxier) iptablesFlavour(ctx context.Context) (xtables.Flavour, error) {
	if f := xtables.Flavour(p.opts.Flavour); f != "" {
		if !f.Valid() {
			return "", fmt.Errorf("iptables flavour %q is neither nft nor legacy", p.opts.Flavour)
		}
		return f, nil
	}
	if p.flavour == "" {
		f, err := xtables.Detect(ctx, p.opts.NetNS.Run, chainFirewall)
		if err != nil {
			return "", err
		}
		p.flavour = f
	}
	return p.flavour, nil
}

// savedTables is iptables-save output: table -> chain -> rule lines
// ("-A CHAIN rule"); a declared chain without rules has an empty list.
type savedTables map[string]map[string][]string

func parseSave(out string) savedTables {
	t := savedTables{}
	for name, st := range xtables.ParseSave(out) {
		chains := map[string][]string{}
		for _, c := range st.Order {
			chains[c] = st.Lines(c)
		}
		for c := range st.Rules {
			chains[c] = st.Lines(c)
		}
		t[name] = chains
	}
	return t
}

// splitWords splits a rule into words (xtables.SplitRule); an
// unterminated quote runs to the end.
func splitWords(s string) []string {
	w, _ := xtables.SplitRule(s)
	return w
}

// sameRule compares two rule lines word by word, ignoring the quoting
// iptables-save chooses.
func sameRule(a, b string) bool { return slices.Equal(splitWords(a), splitWords(b)) }

func sameRules(a, b []string) bool { return slices.EqualFunc(a, b, sameRule) }

func hasRule(rules []string, r string) bool {
	return slices.ContainsFunc(rules, func(x string) bool { return sameRule(x, r) })
}

// insertLine turns "-A CHAIN spec" into "-I CHAIN 1 spec".
func insertLine(rule string) string {
	chain, spec, _ := strings.Cut(strings.TrimPrefix(rule, "-A "), " ")
	return "-I " + chain + " 1 " + spec
}

// restoreInput is the iptables-restore input that makes the saved tables
// hold r's chains and jumps; empty when they already do.
func restoreInput(r *Ruleset, saved savedTables) string {
	var b strings.Builder
	for _, table := range tables {
		t := saved[table]
		var missing []string
		for _, j := range r.Jumps {
			if line := j.Line(); j.Table == table && !hasRule(t[j.Chain], line) {
				missing = append(missing, insertLine(line))
			}
		}
		differs := len(missing) > 0
		for _, c := range r.Chains {
			if c.Table != table {
				continue
			}
			have, ok := t[c.Name]
			differs = differs || !ok || !sameRules(have, c.Lines())
		}
		if !differs {
			continue
		}
		fmt.Fprintf(&b, "*%s\n", table)
		for _, c := range r.Chains {
			if c.Table == table {
				fmt.Fprintf(&b, ":%s - [0:0]\n", c.Name)
			}
		}
		for _, l := range missing {
			b.WriteString(l + "\n")
		}
		for _, c := range r.Chains {
			if c.Table == table {
				for _, l := range c.Lines() {
					b.WriteString(l + "\n")
				}
			}
		}
		b.WriteString("COMMIT\n")
	}
	return b.String()
}

func (p *Proxier) syncIptables(ctx context.Context, r *Ruleset, stats *SyncStats) error {
	f, err := p.iptablesFlavour(ctx)
	if err != nil {
		return err
	}
	ns := p.opts.NetNS
	out, err := ns.Run(ctx, "", f.Save())
	if err != nil {
		return fmt.Errorf("read iptables (%s): %w", f, err)
	}
	in := restoreInput(r, parseSave(out))
	if in == "" {
		return nil
	}
	if _, err := ns.Run(ctx, in, f.Restore(), "--noflush", "-w", "5"); err != nil {
		return fmt.Errorf("restore iptables (%s): %w", f, err)
	}
	stats.IptablesRestored = true
	return nil
}

// iptablesModeChain says a chain belongs to the iptables mode: when a
// table has one, the chains both modes name alike are the iptables mode's.
func iptablesModeChain(name string) bool {
	for _, p := range []string{"KUBE-SVC-", "KUBE-SEP-", "KUBE-EXT-", "KUBE-FW-", "KUBE-SVL-"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return slices.Contains([]string{"KUBE-NODEPORTS", "KUBE-EXTERNAL-SERVICES", "KUBE-PROXY-CANARY",
		"KUBE-KDIVE-CANARY", "KUBE-PROXY-FIREWALL"}, name)
}

// refersToOurSets says a rule matches or maps one of the mode's ipsets.
func refersToOurSets(rule string) bool {
	w := splitWords(rule)
	for i := 0; i+1 < len(w); i++ {
		if (w[i] == "--match-set" || w[i] == "--map-set") && slices.ContainsFunc(newSets(), func(s Set) bool { return s.Name == w[i+1] }) {
			return true
		}
	}
	return false
}

// ownedChains are the table's chains that are the IPVS mode's: those only
// it creates, and the shared-name ones when the table shows the IPVS mode
// (one of its own chains, or the chain matches its ipsets) and not the
// iptables mode.
func ownedChains(table string, t map[string][]string) []string {
	var owned []string
	ipvsSign := false
	for _, c := range ipvsOnlyChains[table] {
		if _, ok := t[c]; ok {
			owned = append(owned, c)
			ipvsSign = true
		}
	}
	iptSign := false
	for c := range t {
		iptSign = iptSign || iptablesModeChain(c)
	}
	for _, c := range sharedChains[table] {
		rules, ok := t[c]
		if ok && !iptSign && (ipvsSign || slices.ContainsFunc(rules, refersToOurSets)) {
			owned = append(owned, c)
		}
	}
	return owned
}

// cleanupInput is the restore input that removes the mode's chains from
// the saved tables, with the rules elsewhere that jump to them or match
// its sets; empty when there is nothing.
func cleanupInput(saved savedTables) string {
	var b strings.Builder
	for _, table := range tables {
		t := saved[table]
		owned := ownedChains(table, t)
		var del []string
		chains := make([]string, 0, len(t))
		for c := range t {
			chains = append(chains, c)
		}
		slices.Sort(chains)
		for _, c := range chains {
			if slices.Contains(owned, c) {
				continue
			}
			for _, rule := range t[c] {
				w := splitWords(rule)
				if slices.Contains(owned, w[len(w)-1]) && w[len(w)-2] == "-j" || refersToOurSets(rule) {
					del = append(del, "-D"+strings.TrimPrefix(rule, "-A"))
				}
			}
		}
		if len(owned) == 0 && len(del) == 0 {
			continue
		}
		fmt.Fprintf(&b, "*%s\n", table)
		for _, c := range owned {
			fmt.Fprintf(&b, ":%s - [0:0]\n", c)
		}
		for _, l := range del {
			b.WriteString(l + "\n")
		}
		for _, c := range owned {
			fmt.Fprintf(&b, "-X %s\n", c)
		}
		b.WriteString("COMMIT\n")
	}
	return b.String()
}

// cleanupIptables removes the mode's rules from both back ends; a back
// end whose tools are not installed has nothing to clean.
func cleanupIptables(ctx context.Context, ns *kernel.NetNS) error {
	var errs []error
	for _, f := range xtables.Flavours {
		out, err := ns.Run(ctx, "", f.Save())
		if xtables.NotInstalled(err) {
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("read iptables (%s): %w", f, err))
			continue
		}
		in := cleanupInput(parseSave(out))
		if in == "" {
			continue
		}
		if _, err := ns.Run(ctx, in, f.Restore(), "--noflush", "-w", "5"); err != nil {
			errs = append(errs, fmt.Errorf("remove iptables rules (%s): %w", f, err))
		}
	}
	return errors.Join(errs...)
}
