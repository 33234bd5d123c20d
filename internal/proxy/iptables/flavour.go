package iptables

import (
	"context"

	"github.com/kdive/kdive/internal/xtables"
)

// Flavour is which iptables a node uses (xtables.Flavour).
type Flavour = xtables.Flavour

const (
	FlavourNFT    = xtables.NFT
	FlavourLegacy = xtables.Legacy
)

// runFunc runs a program in the node's network namespace with stdin and
// returns its standard output (kernel.NetNS.Run).
type runFunc = xtables.RunFunc

// detectFlavour chooses the iptables the node already uses
// (xtables.Detect), kdive's canary chain telling an earlier run's.
func detectFlavour(ctx context.Context, run runFunc) (Flavour, error) {
	return xtables.Detect(ctx, run, ChainCanary)
}
