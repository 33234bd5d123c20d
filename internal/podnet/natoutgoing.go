package podnet

import (
	"fmt"
	"net/netip"

	"github.com/kdive/kdive/internal/kernel/nft"
)

// NATTable is the nftables table of natOutgoing.
const NATTable = "kdive-natoutgoing"

// natOutgoing renders the node's natOutgoing table: traffic from the
// node's own pods to an address outside every pod block (the API server on
// a control-plane host, anything beyond the cluster) leaves with the
// node's address, as Calico's natOutgoing and flannel's --ip-masq do.
// Without it, an underlay that routes only host addresses (a cloud VPC's
// source/destination check, the lab's router) drops those packets.
// Traffic between pods, across nodes too, keeps its source.
func natOutgoingRuleset(block netip.Prefix, blocks []netip.Prefix) *nft.Transaction {
	tx := nft.NewTransaction(natTable)
	tx.Add(&nft.Table{})
	tx.Delete(&nft.Table{})
	tx.Add(&nft.Table{Comment: "kdive pod network: natOutgoing"})
	tx.Add(&nft.Set{Name: "pod-blocks", Type: "ipv4_addr", Flags: []string{"interval"}, AutoMerge: true})
	tx.Add(&nft.Chain{Name: "postrouting", Type: "nat", Hook: "postrouting", Priority: "srcnat"})
	tx.Add(&nft.Rule{Chain: "postrouting", Rule: "ip saddr " + block.String() + " ip daddr != @pod-blocks masquerade"})
	for _, b := range blocks {
		tx.Add(&nft.Element{Set: "pod-blocks", Key: []string{b.String()}})
	}
	return tx
}

// natTable is the table, as the nft door names it.
var natTable = nft.Table{Family: nft.IPv4, Name: NATTable}

// removeNATTable deletes the table whether or not it exists.
func removeNATTable() *nft.Transaction {
	tx := nft.NewTransaction(natTable)
	tx.Add(&nft.Table{})
	tx.Delete(&nft.Table{})
	return tx
}

// natOutgoing keeps the table as the plan says, replacing it (one nft
// transaction) when it differs from what this reconciler last applied or
// is gone.
func (a *applier) natOutgoing() error {
	var want string
	if a.p.NATOutgoing != nil {
		want = a.p.NATOutgoing.String()
	}
	exists, err := nft.HasTable(a.ns, natTable)
	if err != nil {
		return fmt.Errorf("read nftables tables of %s: %w", a.p.Node, err)
	}
	switch {
	case want == "" && !exists:
		return nil
	case want == "":
		if err := nft.New(a.ns).Run(a.ctx, removeNATTable()); err != nil {
			a.fail(a.p.Node, "remove nftables table "+NATTable, err)
			return nil
		}
		a.changed("delete", "nftables table "+NATTable, a.p.Node)
	case exists && want == *a.lastNAT:
		return nil
	default:
		if err := nft.New(a.ns).Run(a.ctx, a.p.NATOutgoing); err != nil {
			a.fail(a.p.Node, "nftables table "+NATTable, err)
			return nil
		}
		a.changed("replace", "nftables table "+NATTable, a.p.Node)
	}
	*a.lastNAT = want
	return nil
}
