package nftables

import (
	"slices"

	"github.com/kdive/kdive/internal/kernel/nft"
)

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
