package iptables

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
)

// Flavour is which iptables a node uses: iptables-nft (rules stored as
// nftables, Debian's default) or iptables-legacy (the x_tables kernel
// API). Both can be present; packets go through both.
type Flavour string

const (
	FlavourNFT    Flavour = "nft"
	FlavourLegacy Flavour = "legacy"
)

// flavours are the flavours Cleanup visits.
var flavours = []Flavour{FlavourNFT, FlavourLegacy}

// tool is the flavour's binary: "" (iptables-nft), "save" or "restore".
func (f Flavour) tool(kind string) string {
	if kind == "" {
		return "iptables-" + string(f)
	}
	return "iptables-" + string(f) + "-" + kind
}

func (f Flavour) valid() bool { return f == FlavourNFT || f == FlavourLegacy }

// runFunc runs a program in the node's network namespace with stdin and
// returns its standard output (kernel.NetNS.Run).
type runFunc func(ctx context.Context, stdin, name string, args ...string) (string, error)

// detectFlavour chooses the iptables the node already uses, as upstream's
// iptables-wrapper does: kubelet's hint chains (KUBE-IPTABLES-HINT,
// KUBE-KUBELET-CANARY in mangle) decide first, nft checked first; then
// kdive's own canary from an earlier run; then whichever flavour holds
// more rules (the older wrapper's count); nft when both are empty.
//
// iptables-legacy-save is run without -t: naming a table would make the
// kernel create it, and legacy tables once created get packets.
func detectFlavour(ctx context.Context, run runFunc) (Flavour, error) {
	nftMangle, nftErr := save(ctx, run, FlavourNFT, TableMangle)
	if hasChain(nftMangle, "KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY") {
		return FlavourNFT, nil
	}
	legacy, legacyErr := save(ctx, run, FlavourLegacy, "")
	if hasChain(legacy, "KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY") {
		return FlavourLegacy, nil
	}
	if nftErr != nil && legacyErr != nil {
		return "", fmt.Errorf("detect iptables flavour: %w", errors.Join(nftErr, legacyErr))
	}
	if nftErr != nil {
		return FlavourLegacy, nil
	}
	if legacyErr != nil {
		return FlavourNFT, nil
	}
	nft, err := save(ctx, run, FlavourNFT, "")
	if err != nil {
		return "", fmt.Errorf("detect iptables flavour: %w", err)
	}
	inNFT, inLegacy := hasChain(nft, ChainCanary), hasChain(legacy, ChainCanary)
	switch {
	case inNFT && !inLegacy:
		return FlavourNFT, nil
	case inLegacy && !inNFT:
		return FlavourLegacy, nil
	case countRules(legacy) > countRules(nft):
		return FlavourLegacy, nil
	}
	return FlavourNFT, nil
}

// save runs iptables-save for one table ("" for all). A missing binary
// is an error wrapping exec.ErrNotFound.
func save(ctx context.Context, run runFunc, f Flavour, t Table) (string, error) {
	args := []string{}
	if t != "" {
		args = append(args, "-t", string(t))
	}
	out, err := run(ctx, "", f.tool("save"), args...)
	if err != nil {
		return "", fmt.Errorf("%s: %w", f.tool("save"), err)
	}
	return out, nil
}

func hasChain(saved string, names ...string) bool {
	for _, line := range strings.Split(saved, "\n") {
		if !strings.HasPrefix(line, ":") {
			continue
		}
		name, _, _ := strings.Cut(line[1:], " ")
		for _, n := range names {
			if name == n {
				return true
			}
		}
	}
	return false
}

func countRules(saved string) int {
	n := 0
	for _, line := range strings.Split(saved, "\n") {
		if strings.HasPrefix(line, "-") {
			n++
		}
	}
	return n
}

// notInstalled says err is a missing iptables binary.
func notInstalled(err error) bool { return errors.Is(err, exec.ErrNotFound) }
