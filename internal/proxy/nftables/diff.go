package nftables

import (
	"slices"
)

// view is a ruleset as the diff reads it: the old one is either a whole
// Ruleset or a recorder holding what incremental changes overwrote.
type view interface {
	chain(name string) *Chain
	set(name string) *Set
	elem(set string, k mkey) (Element, bool)
}

func (rs *Ruleset) chain(name string) *Chain { return rs.Chains[name] }
func (rs *Ruleset) set(name string) *Set     { return rs.Sets[name] }
func (rs *Ruleset) elem(set string, k mkey) (Element, bool) {
	s := rs.Sets[set]
	if s == nil {
		return Element{}, false
	}
	return s.lookup(k)
}

// recorder remembers, for each chain, set and element an incremental
// update touches, its state before the first change. Its methods accept a
// nil recorder (a full render records nothing).
type recorder struct {
	chains map[string]*Chain
	sets   map[string]*Set
	elems  map[string]map[mkey]*Element // nil value: absent before
}

func newRecorder() *recorder {
	return &recorder{chains: map[string]*Chain{}, sets: map[string]*Set{}, elems: map[string]map[mkey]*Element{}}
}

func (r *recorder) touchChain(rs *Ruleset, name string) {
	if r == nil {
		return
	}
	if _, ok := r.chains[name]; !ok {
		r.chains[name] = rs.Chains[name]
	}
}

func (r *recorder) touchSet(rs *Ruleset, name string) {
	if r == nil {
		return
	}
	if _, ok := r.sets[name]; !ok {
		r.sets[name] = rs.Sets[name]
	}
}

func (r *recorder) touchElem(rs *Ruleset, set string, k mkey) {
	if r == nil {
		return
	}
	m := r.elems[set]
	if m == nil {
		m = map[mkey]*Element{}
		r.elems[set] = m
	}
	if _, ok := m[k]; ok {
		return
	}
	if e, ok := rs.elem(set, k); ok {
		m[k] = &e
	} else {
		m[k] = nil
	}
}

// The recorder as the old view: touched objects as they were, untouched
// ones as they still are in cur.
type recorded struct {
	r   *recorder
	cur *Ruleset
}

func (v recorded) chain(name string) *Chain {
	if c, ok := v.r.chains[name]; ok {
		return c
	}
	return v.cur.Chains[name]
}

func (v recorded) set(name string) *Set {
	if s, ok := v.r.sets[name]; ok {
		return s
	}
	return v.cur.Sets[name]
}

func (v recorded) elem(set string, k mkey) (Element, bool) {
	if e, ok := v.r.elems[set][k]; ok {
		if e == nil {
			return Element{}, false
		}
		return *e, true
	}
	return v.cur.elem(set, k)
}

// diff computes the transaction turning old into cur. With rec nil it
// compares everything; otherwise only what rec touched. It reports false
// when a set's declaration changed (which cannot be patched in place: the
// caller replaces the table).
func diff(old view, cur *Ruleset, rec *recorder) (*Transaction, bool) {
	t := &Transaction{}
	var setNames, chainNames []string
	var elemKeys func(set string) []mkey
	if rec == nil {
		o := old.(*Ruleset)
		setNames = union(keysOf(o.Sets), keysOf(cur.Sets))
		chainNames = union(keysOf(o.Chains), keysOf(cur.Chains))
		elemKeys = func(set string) []mkey {
			var ks []mkey
			if s := o.Sets[set]; s != nil {
				ks = keysOf(s.elems)
			}
			if s := cur.Sets[set]; s != nil {
				for k := range s.elems {
					if o.Sets[set] == nil || o.Sets[set].elems[k] == nil {
						ks = append(ks, k)
					}
				}
			}
			return ks
		}
	} else {
		setNames = union(keysOf(rec.sets), keysOf(rec.elems))
		chainNames = union(keysOf(rec.chains), nil)
		elemKeys = func(set string) []mkey { return keysOf(rec.elems[set]) }
	}
	for _, name := range setNames {
		o, n := old.set(name), cur.Sets[name]
		switch {
		case o == nil && n == nil:
		case o == nil:
			t.AddSets = append(t.AddSets, n)
			if es := n.Elements(); len(es) > 0 {
				t.AddElems = append(t.AddElems, SetElems{Set: n, Elems: es})
			}
		case n == nil:
			t.DelSets = append(t.DelSets, o)
		case o.Kind != n.Kind || o.Timeout != n.Timeout:
			return nil, false
		default:
			del, add := diffElems(old, n, elemKeys(name))
			if len(del) > 0 {
				t.DelElems = append(t.DelElems, SetElems{Set: n, Elems: del})
			}
			if len(add) > 0 {
				t.AddElems = append(t.AddElems, SetElems{Set: n, Elems: add})
			}
		}
	}
	for _, name := range chainNames {
		o, n := old.chain(name), cur.Chains[name]
		switch {
		case o == nil && n == nil:
		case o == nil:
			t.AddChains = append(t.AddChains, n)
			t.SetRules = append(t.SetRules, n)
		case n == nil:
			t.FlushChains = append(t.FlushChains, name)
			t.DelChains = append(t.DelChains, name)
		case (o.Hook == nil) != (n.Hook == nil) || o.Hook != nil && *o.Hook != *n.Hook:
			return nil, false
		case !sameRules(o.Rules, n.Rules):
			t.FlushChains = append(t.FlushChains, name)
			t.SetRules = append(t.SetRules, n)
		}
	}
	return t, true
}

func diffElems(old view, n *Set, keys []mkey) (del, add []Element) {
	slices.SortFunc(keys, func(a, b mkey) int { return a.compare(b) })
	for _, k := range keys {
		oe, oOK := old.elem(n.Name, k)
		ne, nOK := n.lookup(k)
		if oOK && nOK && oe == ne {
			continue
		}
		if oOK {
			del = append(del, oe)
		}
		if nOK {
			add = append(add, ne)
		}
	}
	return del, add
}

func sameRules(a, b []Rule) bool {
	return slices.EqualFunc(a, b, func(x, y Rule) bool { return x.String() == y.String() })
}

func keysOf[K comparable, V any](m map[K]V) []K {
	out := make([]K, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

func union(a, b []string) []string {
	out := append(slices.Clone(a), b...)
	slices.Sort(out)
	return slices.Compact(out)
}
