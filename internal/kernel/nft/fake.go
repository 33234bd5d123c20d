package nft

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
)

// Fake is an in-memory Interface for unit tests. It keeps each table's
// objects, applies a transaction to a copy of its table and keeps the
// copy only when every operation succeeded (the kernel's atomicity), and
// refuses what the kernel refuses: an object in a table, chain, set or map
// that does not exist, creating what exists, deleting what does not, a
// non-empty chain deleted, an element added again with another value.
// Rules are kept as their text.
type Fake struct {
	mu     sync.Mutex
	tables map[string]*fakeTable
	gen    uint32
}

var _ Interface = (*Fake)(nil)

type fakeTable struct {
	comment  string
	chains   map[string]*fakeChain
	sets     map[string]*fakeSet
	counters map[string]Counter
	handle   int
}

type fakeChain struct {
	chain Chain
	rules []Rule
}

type fakeSet struct {
	set   *Set // or
	m     *Map
	elems map[string]Element // by key
}

// NewFake returns an empty Fake.
func NewFake() *Fake { return &Fake{tables: map[string]*fakeTable{}} }

func (t *fakeTable) clone() *fakeTable {
	c := &fakeTable{comment: t.comment, chains: map[string]*fakeChain{}, sets: map[string]*fakeSet{},
		counters: maps.Clone(t.counters), handle: t.handle}
	for n, ch := range t.chains {
		c.chains[n] = &fakeChain{chain: ch.chain, rules: slices.Clone(ch.rules)}
	}
	for n, s := range t.sets {
		c.sets[n] = &fakeSet{set: s.set, m: s.m, elems: maps.Clone(s.elems)}
	}
	return c
}

// Run applies tx to a copy of its table and keeps it when all of tx
// applied.
func (f *Fake) Run(_ context.Context, tx *Transaction) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	key := tx.table.String()
	var t *fakeTable
	if cur := f.tables[key]; cur != nil {
		t = cur.clone()
	}
	for i, o := range tx.ops {
		var err error
		if t, err = apply(t, o); err != nil {
			line := string(o.obj.appendOp(nil, o.verb, tx.table))
			return &Error{Msg: fmt.Sprintf("Error: %v: %s", err, line), Labels: tx.labelsOf([]int{i})}
		}
	}
	if t == nil {
		delete(f.tables, key)
	} else {
		f.tables[key] = t
	}
	f.gen++
	return nil
}

// apply does one operation to t (nil: no table) and returns the table.
func apply(t *fakeTable, o op) (*fakeTable, error) {
	if tb, ok := o.obj.(*Table); ok {
		switch {
		case o.verb == del && t == nil:
			return nil, errNoEnt
		case o.verb == del:
			return nil, nil
		case o.verb == create && t != nil:
			return nil, errExist
		case o.verb == flush && t == nil:
			return nil, errNoEnt
		case o.verb == flush:
			for _, ch := range t.chains {
				ch.rules = nil
			}
			for _, s := range t.sets {
				s.elems = map[string]Element{}
			}
			return t, nil
		case t == nil:
			return &fakeTable{comment: tb.Comment, chains: map[string]*fakeChain{}, sets: map[string]*fakeSet{}, counters: map[string]Counter{}}, nil
		}
		return t, nil
	}
	if t == nil {
		return nil, errNoEnt
	}
	switch x := o.obj.(type) {
	case *Chain:
		ch := t.chains[x.Name]
		switch {
		case (o.verb == add || o.verb == create) && ch == nil:
			t.chains[x.Name] = &fakeChain{chain: *x}
		case o.verb == create:
			return t, errExist
		case o.verb == add:
		case ch == nil:
			return t, errNoEnt
		case o.verb == flush:
			ch.rules = nil
		case len(ch.rules) > 0 || t.chainUsed(x.Name):
			return t, errBusy
		default:
			delete(t.chains, x.Name)
		}
	case *Set, *Map:
		name, s := "", &fakeSet{elems: map[string]Element{}}
		if ss, ok := x.(*Set); ok {
			name, s.set = ss.Name, ss
		} else {
			m := x.(*Map)
			name, s.m = m.Name, m
		}
		cur := t.sets[name]
		switch {
		case (o.verb == add || o.verb == create) && cur == nil:
			t.sets[name] = s
		case o.verb == create:
			return t, errExist
		case o.verb == add:
		case cur == nil:
			return t, errNoEnt
		case o.verb == flush:
			cur.elems = map[string]Element{}
		default:
			delete(t.sets, name)
		}
	case *Element:
		s := t.sets[x.container()]
		if s == nil || (x.Map != "") != (s.m != nil) {
			return t, errNoEnt
		}
		if o.verb != del && !t.targetsExist(strings.Join(x.Value, " . ")) {
			return t, errNoEnt
		}
		k := strings.Join(x.Key, " . ")
		cur, ok := s.elems[k]
		switch {
		case o.verb == del && !ok:
			return t, errNoEnt
		case o.verb == del:
			delete(s.elems, k)
		case ok && o.verb == create:
			return t, errExist
		case ok && !slices.Equal(cur.Value, x.Value):
			return t, errExist
		case !ok:
			e := *x
			e.Key, e.Value = slices.Clone(x.Key), slices.Clone(x.Value)
			s.elems[k] = e
		}
	case *Rule:
		ch := t.chains[x.Chain]
		if ch == nil {
			return t, errNoEnt
		}
		if o.verb == del {
			i := slices.IndexFunc(ch.rules, func(r Rule) bool { return r.Handle == x.Handle })
			if i < 0 {
				return t, errNoEnt
			}
			ch.rules = slices.Delete(ch.rules, i, i+1)
			return t, nil
		}
		if o.verb != add {
			return t, fmt.Errorf("%s of a rule", o.verb)
		}
		if strings.Contains(x.Rule, "\n") {
			return t, fmt.Errorf("syntax error: a rule spans lines")
		}
		if !t.targetsExist(x.Rule) {
			return t, errNoEnt
		}
		t.handle++
		r := *x
		r.Handle = t.handle
		ch.rules = append(ch.rules, r)
	case *Counter:
		_, ok := t.counters[x.Name]
		switch {
		case (o.verb == add || o.verb == create) && !ok:
			t.counters[x.Name] = *x
		case o.verb == create:
			return t, errExist
		case o.verb == add:
		case !ok:
			return t, errNoEnt
		case o.verb == del:
			delete(t.counters, x.Name)
		}
	}
	return t, nil
}

// targetsExist says whether the chains a rule or verdict jumps or goes to
// ("jump X", "goto X") and the sets it looks up ("@X") exist.
func (t *fakeTable) targetsExist(text string) bool {
	f := strings.Fields(text)
	for i, w := range f {
		w = strings.TrimRight(w, ",;}")
		switch {
		case (w == "jump" || w == "goto") && i+1 < len(f):
			if t.chains[strings.TrimRight(f[i+1], ",;}")] == nil {
				return false
			}
		case strings.HasPrefix(w, "@"):
			if t.sets[w[1:]] == nil {
				return false
			}
		}
	}
	return true
}

// chainUsed says whether a rule or map element jumps or goes to chain.
func (t *fakeTable) chainUsed(chain string) bool {
	refs := []string{"jump " + chain, "goto " + chain}
	for _, ch := range t.chains {
		for _, r := range ch.rules {
			w := " " + r.Rule + " "
			for _, ref := range refs {
				if strings.Contains(w, " "+ref+" ") {
					return true
				}
			}
		}
	}
	for _, s := range t.sets {
		for _, e := range s.elems {
			if v := strings.Join(e.Value, " . "); slices.Contains(refs, v) {
				return true
			}
		}
	}
	return false
}

var (
	errNoEnt = fmt.Errorf("Could not process rule: No such file or directory")
	errExist = fmt.Errorf("Could not process rule: File exists")
	errBusy  = fmt.Errorf("Could not process rule: Device or resource busy")
)

// List returns the table, objects sorted by name and elements by key.
func (f *Fake) List(_ context.Context, tb Table) (*Listing, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := f.tables[tb.String()]
	if t == nil {
		return nil, fmt.Errorf("list table %s: %w", tb, ErrNotFound)
	}
	l := &Listing{Table: Table{Family: tb.Family, Name: tb.Name, Comment: t.comment}}
	for _, n := range slices.Sorted(maps.Keys(t.chains)) {
		ch := t.chains[n]
		l.Chains = append(l.Chains, ch.chain)
		for _, r := range ch.rules {
			l.Rules = append(l.Rules, ListedRule{Rule: r})
		}
	}
	for _, n := range slices.Sorted(maps.Keys(t.sets)) {
		s := t.sets[n]
		var elems []Element
		for _, k := range slices.Sorted(maps.Keys(s.elems)) {
			elems = append(elems, s.elems[k])
		}
		if s.set != nil {
			l.Sets = append(l.Sets, ListedSet{Set: *s.set, Elements: elems})
		} else {
			l.Maps = append(l.Maps, ListedMap{Map: *s.m, Elements: elems})
		}
	}
	for _, n := range slices.Sorted(maps.Keys(t.counters)) {
		l.Counters = append(l.Counters, ListedCounter{Counter: t.counters[n]})
	}
	return l, nil
}

// Generation counts the transactions applied.
func (f *Fake) Generation() (uint32, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.gen, nil
}

// Dump is the table as an nft script that would create it (objects sorted
// by name, elements by key, rules in order), or "" when there is none:
// for comparing with a golden file.
func (f *Fake) Dump(tb Table) string {
	l, err := f.List(context.Background(), tb)
	if err != nil {
		return ""
	}
	tx := NewTransaction(tb)
	tx.Add(&Table{Comment: l.Table.Comment})
	for i := range l.Chains {
		tx.Add(&l.Chains[i])
	}
	for i := range l.Sets {
		tx.Add(&l.Sets[i].Set)
	}
	for i := range l.Maps {
		tx.Add(&l.Maps[i].Map)
	}
	for i := range l.Counters {
		tx.Add(&l.Counters[i].Counter)
	}
	for i := range l.Rules {
		tx.Add(&l.Rules[i].Rule)
	}
	for _, s := range l.Sets {
		for i := range s.Elements {
			tx.Add(&s.Elements[i])
		}
	}
	for _, m := range l.Maps {
		for i := range m.Elements {
			tx.Add(&m.Elements[i])
		}
	}
	return tx.String()
}
