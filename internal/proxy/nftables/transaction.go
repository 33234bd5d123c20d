package nftables

import (
	"slices"

	"github.com/kdive/kdive/internal/kernel/nft"
)

// Transaction is the change from one ruleset to another, in the order nft
// must apply it. Applied with one `nft -f`, it is atomic.
type Transaction struct {
	// Replace, when set, deletes the table and creates this ruleset.
	Replace *Ruleset

	AddChains   []*Chain
	AddSets     []*Set
	DelElems    []SetElems
	FlushChains []string
	SetRules    []*Chain // chains whose rules are added (after a flush, or new)
	AddElems    []SetElems
	DelSets     []*Set
	DelChains   []string
}

// SetElems are elements of one set.
type SetElems struct {
	Set   *Set
	Elems []Element
}

// Empty says there is nothing to send.
func (t *Transaction) Empty() bool {
	return t.Replace == nil && len(t.AddChains)+len(t.AddSets)+len(t.DelElems)+len(t.FlushChains)+
		len(t.SetRules)+len(t.AddElems)+len(t.DelSets)+len(t.DelChains) == 0
}

// nft is the transaction for the nft door, each operation labelled with
// its service port.
func (t *Transaction) nft() *nft.Transaction {
	tx := nft.NewTransaction(nftTable)
	if t.Replace != nil {
		tx.Add(&nft.Table{})
		tx.Delete(&nft.Table{})
		t.Replace.addTo(tx, false)
		return tx
	}
	for _, c := range t.AddChains {
		tx.Label(svcName(c.Service))
		tx.Add(c.object())
	}
	for _, s := range t.AddSets {
		tx.Label(svcName(s.Service))
		tx.Add(s.object())
	}
	deleted := map[string]bool{}
	for _, s := range t.DelSets {
		deleted[s.Name] = true
	}
	elems := func(ses []SetElems, do func(nft.Object)) {
		for _, se := range ses {
			if deleted[se.Set.Name] {
				continue
			}
			for _, e := range se.Elems {
				tx.Label(svcName(e.Service))
				do(e.object(se.Set))
			}
		}
	}
	elems(t.DelElems, tx.Delete)
	tx.Label("")
	for _, c := range t.FlushChains {
		tx.Flush(&nft.Chain{Name: c})
	}
	for _, c := range t.SetRules {
		tx.Label(svcName(c.Service))
		for _, r := range c.Rules {
			tx.Add(&nft.Rule{Chain: c.Name, Rule: r.String()})
		}
	}
	elems(t.AddElems, tx.Add)
	for _, s := range t.DelSets {
		tx.Label(svcName(s.Service))
		tx.Delete(s.object())
	}
	tx.Label("")
	for _, c := range t.DelChains {
		tx.Delete(&nft.Chain{Name: c})
	}
	return tx
}

// String is the transaction's nft script.
func (t *Transaction) String() string { return t.nft().String() }

// objects names what a transaction from the kernel's table to the
// programmed one touches, once each: chains and sets that were missing or
// extra, chains whose rules differed, elements missing, extra or changed.
func (t *Transaction) objects() []string {
	seen := map[string]bool{}
	var out []string
	add := func(s string) {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	for _, c := range t.AddChains {
		add("chain " + c.Name)
	}
	for _, s := range t.AddSets {
		add(s.keyword() + " " + s.Name)
	}
	for _, ses := range [][]SetElems{t.DelElems, t.AddElems} {
		for _, se := range ses {
			if seen[se.Set.keyword()+" "+se.Set.Name] {
				continue // the set was missing: it counts once
			}
			for _, e := range se.Elems {
				add("element " + se.Set.Name + " { " + e.keyString(se.Set.Kind) + " }")
			}
		}
	}
	for _, c := range t.SetRules {
		if !seen["chain "+c.Name] {
			add("rules of chain " + c.Name)
		}
	}
	for _, s := range t.DelSets {
		add(s.keyword() + " " + s.Name)
	}
	for _, c := range t.DelChains {
		add("chain " + c)
	}
	return out
}

// String is the table as the nft script that creates it (objects and
// elements sorted).
func (rs *Ruleset) String() string {
	tx := nft.NewTransaction(nftTable)
	rs.addTo(tx, true)
	return tx.String()
}

// nftTable is the table kdive owns, as the nft door names it.
var nftTable = nft.Table{Family: Family, Name: Table}

// staticChains are written first, in this order; other chains follow by name.
var staticChains = []string{
	chainPrerouting, chainOutput, chainPostrouting, chainServices, chainMasquerading,
	chainMarkMasq, chainClusterIPMasq, chainReject,
}

// ChainNames are the chain names in the order String writes them.
func (rs *Ruleset) ChainNames() []string {
	var names, rest []string
	for _, n := range staticChains {
		if rs.Chains[n] != nil {
			names = append(names, n)
		}
	}
	for n := range rs.Chains {
		if !slices.Contains(staticChains, n) {
			rest = append(rest, n)
		}
	}
	slices.Sort(rest)
	return append(names, rest...)
}

// SetNames are the set and map names, sorted.
func (rs *Ruleset) SetNames() []string {
	names := make([]string, 0, len(rs.Sets))
	for n := range rs.Sets {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// addTo adds the table and everything in it to tx, each object
// labelled with its service port: chains, sets and maps, rules, then
// elements (which go to chains), elements in key order when sorted (the
// kernel does not care, and sorting 100,000 elements takes a while).
func (rs *Ruleset) addTo(tx *nft.Transaction, sorted bool) {
	tx.Add(&nft.Table{Comment: "kdive service proxy"})
	chains, sets := rs.ChainNames(), rs.SetNames()
	for _, name := range chains {
		c := rs.Chains[name]
		tx.Label(svcName(c.Service))
		tx.Add(c.object())
	}
	for _, name := range sets {
		s := rs.Sets[name]
		tx.Label(svcName(s.Service))
		tx.Add(s.object())
	}
	for _, name := range chains {
		c := rs.Chains[name]
		tx.Label(svcName(c.Service))
		for _, r := range c.Rules {
			tx.Add(&nft.Rule{Chain: c.Name, Rule: r.String()})
		}
	}
	for _, name := range sets {
		s := rs.Sets[name]
		slots := s.sortedSlots
		if !sorted {
			slots = s.slots
		}
		for _, sl := range slots() {
			e := sl.first.elem
			tx.Label(svcName(e.Service))
			tx.Add(e.object(s))
		}
	}
	tx.Label("")
}
