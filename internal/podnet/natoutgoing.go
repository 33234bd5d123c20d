package podnet

import (
	"fmt"
	"net/netip"
	"strings"
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
func natOutgoingRuleset(block netip.Prefix, blocks []netip.Prefix) string {
	var elems []string
	for _, b := range blocks {
		elems = append(elems, b.String())
	}
	return fmt.Sprintf(`table ip %[1]s
delete table ip %[1]s
table ip %[1]s {
	comment "kdive pod network: natOutgoing"
	set pod-blocks {
		type ipv4_addr
		flags interval
		auto-merge
		elements = { %[2]s }
	}
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr %[3]s ip daddr != @pod-blocks masquerade
	}
}
`, NATTable, strings.Join(elems, ", "), block)
}

// removeNATTable deletes the table whether or not it exists.
const removeNATTable = "table ip " + NATTable + "\ndelete table ip " + NATTable + "\n"

// natOutgoing keeps the table as the plan says, replacing it (one nft
// transaction) when it differs from what this reconciler last applied or
// is gone.
func (a *applier) natOutgoing() error {
	want := a.p.NATOutgoing
	exists, err := a.ns.HasNftTable("ip", NATTable)
	if err != nil {
		return fmt.Errorf("read nftables tables of %s: %w", a.p.Node, err)
	}
	switch {
	case want == "" && !exists:
		return nil
	case want == "":
		if err := a.ns.Nft(a.ctx, removeNATTable); err != nil {
			a.fail(a.p.Node, "remove nftables table "+NATTable, err)
			return nil
		}
		a.changed("delete", "nftables table "+NATTable, a.p.Node)
	case exists && want == *a.lastNAT:
		return nil
	default:
		if err := a.ns.Nft(a.ctx, want); err != nil {
			a.fail(a.p.Node, "nftables table "+NATTable, err)
			return nil
		}
		a.changed("replace", "nftables table "+NATTable, a.p.Node)
	}
	*a.lastNAT = want
	return nil
}
