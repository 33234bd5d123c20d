package nftables

import (
	"context"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
)

// fakeNft is a stand-in for `nft -f` in one namespace, for tests without
// root: it parses the scripts this package writes and applies them to a
// model of the table with the kernel's rules that matter here. A script is
// applied whole or not at all; objects must exist before they are used
// and be unreferenced (and, for chains, empty) when deleted; adding an
// element whose key exists with another value fails. It is stricter than
// the kernel in one way: adding a chain or set that exists is an error, as
// it would be a bug in the diff.
type fakeNft struct {
	tbl     *fakeTable
	scripts []string
	// fail, when set, makes the next script fail (and is cleared).
	fail error
}

type fakeTable struct {
	present bool
	chains  map[string]*fakeChain
	sets    map[string]*fakeSet
}

type fakeChain struct {
	hook  string
	rules []string
}

type fakeSet struct {
	decl  string
	elems map[string]string // key -> element text
}

func (f *fakeNft) nft(_ context.Context, script string) error {
	f.scripts = append(f.scripts, script)
	if err := f.fail; err != nil {
		f.fail = nil
		return err
	}
	t := f.tbl.clone()
	if err := t.apply(script); err != nil {
		return err
	}
	f.tbl = t
	return nil
}

func newFakeNft() *fakeNft {
	return &fakeNft{tbl: &fakeTable{chains: map[string]*fakeChain{}, sets: map[string]*fakeSet{}}}
}

func (t *fakeTable) clone() *fakeTable {
	c := &fakeTable{present: t.present, chains: map[string]*fakeChain{}, sets: map[string]*fakeSet{}}
	for n, ch := range t.chains {
		c.chains[n] = &fakeChain{hook: ch.hook, rules: slices.Clone(ch.rules)}
	}
	for n, s := range t.sets {
		c.sets[n] = &fakeSet{decl: s.decl, elems: maps.Clone(s.elems)}
	}
	return c
}

var (
	tblPrefix = Family + " " + Table + " "
	refSet    = regexp.MustCompile(`@([^\s{}]+)`)
	refChain  = regexp.MustCompile(`(?:goto|jump) ([^\s,}]+)`)
)

func (t *fakeTable) apply(script string) (err error) {
	lines := strings.Split(strings.TrimSuffix(script, "\n"), "\n")
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		fail := func(format string, args ...any) error {
			return fmt.Errorf("/dev/stdin:%d:1-1: Error: %s", i+1, fmt.Sprintf(format, args...))
		}
		cut := func(verb string) (string, bool) { return strings.CutPrefix(l, verb+" "+tblPrefix) }
		if l == "add table "+Family+" "+Table {
			t.present = true
			continue
		}
		if l == "delete table "+Family+" "+Table {
			if !t.present {
				return fail("Could not process rule: No such file or directory")
			}
			t.present, t.chains, t.sets = false, map[string]*fakeChain{}, map[string]*fakeSet{}
			continue
		}
		if !t.present && l != "table "+Family+" "+Table+" {" {
			return fail("Could not process rule: No such file or directory")
		}
		if l == "table "+Family+" "+Table+" {" {
			t.present = true
			n, err := t.block(lines[i+1:], i+1)
			if err != nil {
				return err
			}
			i += n
			continue
		}
		if rest, ok := cut("add chain"); ok {
			name, hook, _ := strings.Cut(rest, " { ")
			if t.chains[name] != nil {
				return fail("chain %s exists", name)
			}
			t.chains[name] = &fakeChain{hook: strings.TrimSuffix(hook, " }")}
		} else if rest, ok := cut("add map"); ok {
			err = t.addSet(rest, fail)
		} else if rest, ok := cut("add set"); ok {
			err = t.addSet(rest, fail)
		} else if rest, ok := cut("delete element"); ok {
			name, elem := setAndElem(rest)
			s := t.sets[name]
			if s == nil || s.elems[elemKey(elem)] == "" {
				return fail("Could not process rule: No such file or directory")
			}
			delete(s.elems, elemKey(elem))
		} else if rest, ok := cut("add element"); ok {
			name, elem := setAndElem(rest)
			err = t.addElem(name, elem, fail)
		} else if rest, ok := cut("flush chain"); ok {
			c := t.chains[rest]
			if c == nil {
				return fail("No such file or directory")
			}
			c.rules = nil
		} else if rest, ok := cut("add rule"); ok {
			name, rule, _ := strings.Cut(rest, " ")
			err = t.addRule(name, rule, fail)
		} else if rest, ok := strings.CutPrefix(l, "delete map "+tblPrefix); ok {
			err = t.delSet(rest, fail)
		} else if rest, ok := strings.CutPrefix(l, "delete set "+tblPrefix); ok {
			err = t.delSet(rest, fail)
		} else if rest, ok := cut("delete chain"); ok {
			c := t.chains[rest]
			switch {
			case c == nil:
				return fail("No such file or directory")
			case len(c.rules) > 0:
				return fail("Could not process rule: Device or resource busy")
			case t.chainUsed(rest):
				return fail("Could not process rule: Device or resource busy")
			}
			delete(t.chains, rest)
		} else {
			return fail("syntax error: %q", l)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// block reads a table block (after its first line); it returns the number
// of lines read. Its objects are created first, then filled, as nft does.
func (t *fakeTable) block(lines []string, offset int) (int, error) {
	type pending struct {
		line       int
		set, chain string
		text       string
	}
	var fills []pending
	var set, chain string
	inElems := false
	for i, l := range lines {
		l = strings.TrimSpace(l)
		fail := func(format string, args ...any) error {
			return fmt.Errorf("/dev/stdin:%d:1-1: Error: %s", offset+i+1, fmt.Sprintf(format, args...))
		}
		switch {
		case l == "}" && inElems:
			inElems = false
		case l == "}" && (set != "" || chain != ""):
			set, chain = "", ""
		case l == "}":
			for _, p := range fills {
				fail := func(format string, args ...any) error {
					return fmt.Errorf("/dev/stdin:%d:1-1: Error: %s", p.line, fmt.Sprintf(format, args...))
				}
				var err error
				if p.set != "" {
					err = t.addElem(p.set, p.text, fail)
				} else {
					err = t.addRule(p.chain, p.text, fail)
				}
				if err != nil {
					return 0, err
				}
			}
			return i + 1, nil
		case strings.HasPrefix(l, "comment "):
		case strings.HasPrefix(l, "set ") || strings.HasPrefix(l, "map "):
			set = strings.TrimSuffix(strings.Fields(l)[1], " {")
			if t.sets[set] != nil {
				return 0, fail("set %s exists", set)
			}
			t.sets[set] = &fakeSet{elems: map[string]string{}}
		case set != "" && l == "elements = {":
			inElems = true
		case set != "" && inElems:
			fills = append(fills, pending{line: offset + i + 1, set: set, text: strings.TrimSuffix(l, ",")})
		case set != "":
			t.sets[set].decl = l
		case strings.HasPrefix(l, "chain "):
			chain = strings.Fields(l)[1]
			if t.chains[chain] != nil {
				return 0, fail("chain %s exists", chain)
			}
			t.chains[chain] = &fakeChain{}
		case chain != "" && strings.HasPrefix(l, "type "):
			t.chains[chain].hook = l
		case chain != "":
			fills = append(fills, pending{line: offset + i + 1, chain: chain, text: l})
		default:
			return 0, fail("syntax error: %q", l)
		}
	}
	return 0, fmt.Errorf("unterminated table block")
}

func (t *fakeTable) addSet(rest string, fail func(string, ...any) error) error {
	name, decl, _ := strings.Cut(rest, " { ")
	if t.sets[name] != nil {
		return fail("set %s exists", name)
	}
	t.sets[name] = &fakeSet{decl: strings.TrimSuffix(decl, "; }"), elems: map[string]string{}}
	return nil
}

func (t *fakeTable) delSet(name string, fail func(string, ...any) error) error {
	if t.sets[name] == nil {
		return fail("No such file or directory")
	}
	for _, c := range t.chains {
		for _, r := range c.rules {
			for _, m := range refSet.FindAllStringSubmatch(r, -1) {
				if m[1] == name {
					return fail("Could not process rule: Device or resource busy")
				}
			}
		}
	}
	delete(t.sets, name)
	return nil
}

func (t *fakeTable) addElem(name, elem string, fail func(string, ...any) error) error {
	s := t.sets[name]
	if s == nil {
		return fail("Could not process rule: No such file or directory")
	}
	for _, m := range refChain.FindAllStringSubmatch(elem, -1) {
		if t.chains[m[1]] == nil {
			return fail("Could not process rule: No such file or directory")
		}
	}
	k := elemKey(elem)
	if old, ok := s.elems[k]; ok && old != elem {
		return fail("Could not process rule: File exists")
	}
	s.elems[k] = elem
	return nil
}

func (t *fakeTable) addRule(name, rule string, fail func(string, ...any) error) error {
	c := t.chains[name]
	if c == nil {
		return fail("Could not process rule: No such file or directory")
	}
	for _, m := range refSet.FindAllStringSubmatch(rule, -1) {
		if t.sets[m[1]] == nil {
			return fail("Could not process rule: No such file or directory")
		}
	}
	for _, m := range refChain.FindAllStringSubmatch(rule, -1) {
		if t.chains[m[1]] == nil {
			return fail("Could not process rule: No such file or directory")
		}
	}
	c.rules = append(c.rules, rule)
	return nil
}

func (t *fakeTable) chainUsed(name string) bool {
	used := func(text string) bool {
		for _, m := range refChain.FindAllStringSubmatch(text, -1) {
			if m[1] == name {
				return true
			}
		}
		return false
	}
	for _, c := range t.chains {
		for _, r := range c.rules {
			if used(r) {
				return true
			}
		}
	}
	for _, s := range t.sets {
		for _, e := range s.elems {
			if used(e) {
				return true
			}
		}
	}
	return false
}

// setAndElem splits "NAME { ELEM }".
func setAndElem(rest string) (string, string) {
	name, elem, _ := strings.Cut(rest, " { ")
	return name, strings.TrimSuffix(elem, " }")
}

// elemKey is an element's key: its text before a comment or value.
func elemKey(elem string) string {
	if i := strings.Index(elem, " comment "); i >= 0 {
		return elem[:i]
	}
	if i := strings.Index(elem, " : "); i >= 0 {
		return elem[:i]
	}
	return elem
}

// Dump is the table in a canonical form (objects and elements sorted).
func (f *fakeNft) Dump() string {
	if !f.tbl.present {
		return "<no table>"
	}
	return f.tbl.dump()
}

func (t *fakeTable) dump() string {
	var b strings.Builder
	for _, n := range slices.Sorted(maps.Keys(t.sets)) {
		s := t.sets[n]
		fmt.Fprintf(&b, "set %s {%s}\n", n, s.decl)
		for _, k := range slices.Sorted(maps.Keys(s.elems)) {
			fmt.Fprintf(&b, "\t%s\n", s.elems[k])
		}
	}
	for _, n := range slices.Sorted(maps.Keys(t.chains)) {
		c := t.chains[n]
		fmt.Fprintf(&b, "chain %s {%s}\n", n, c.hook)
		for _, r := range c.rules {
			fmt.Fprintf(&b, "\t%s\n", r)
		}
	}
	return b.String()
}

// fresh is the table a fresh load of rs gives.
func fresh(rs *Ruleset) string {
	f := newFakeNft()
	if err := f.nft(context.Background(), (&Transaction{Replace: rs}).String()); err != nil {
		panic(err)
	}
	return f.Dump()
}
