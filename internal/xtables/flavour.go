package xtables

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"

	"github.com/kdive/kdive/internal/kernel"
)

// Flavour is which iptables a node uses: iptables-nft (rules stored as
// nftables, Debian's default) or iptables-legacy (the x_tables kernel
// API). Both can be present; packets go through both.
type Flavour string

const (
	NFT    Flavour = "nft"
	Legacy Flavour = "legacy"
)

// Flavours are both, nft first.
var Flavours = []Flavour{NFT, Legacy}

// Valid says f is one of the two.
func (f Flavour) Valid() bool { return f == NFT || f == Legacy }

// Save is the flavour's iptables-save program.
func (f Flavour) Save() string { return "iptables-" + string(f) + "-save" }

// Restore is the flavour's iptables-restore program.
func (f Flavour) Restore() string { return "iptables-" + string(f) + "-restore" }

// Tool is the flavour's save/restore pair as a kernel ruleset tool.
func (f Flavour) Tool() kernel.RulesetTool {
	return kernel.RulesetTool{Name: f.Restore(), Save: []string{f.Save()}, Restore: []string{f.Restore()}}
}

// RunFunc runs a program in the node's network namespace with stdin and
// returns its standard output (kernel.NetNS.Run).
type RunFunc func(ctx context.Context, stdin, name string, args ...string) (string, error)

// Chains kubelet creates in the iptables it uses (mangle), which
// upstream's iptables wrapper reads first.
var kubeletHints = []string{"KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY"}

// Detect chooses the iptables the node already uses, as upstream's
// iptables-wrapper does: kubelet's hint chains decide first, nft checked
// first; then ours, a chain the caller wrote in an earlier run; then
// whichever flavour holds more rules (the older wrapper's count); nft
// when both are empty. A flavour whose save fails counts as absent; both
// failing is an error.
//
// iptables-legacy-save is run without -t: naming a table would make the
// kernel create it, and legacy tables once created get packets.
func Detect(ctx context.Context, run RunFunc, ours string) (Flavour, error) {
	nftMangle, nftErr := Save(ctx, run, NFT, "mangle")
	if HasChain(nftMangle, kubeletHints...) {
		return NFT, nil
	}
	legacy, legacyErr := Save(ctx, run, Legacy, "")
	if HasChain(legacy, kubeletHints...) {
		return Legacy, nil
	}
	if nftErr != nil && legacyErr != nil {
		return "", fmt.Errorf("detect iptables flavour: %w", errors.Join(nftErr, legacyErr))
	}
	if nftErr != nil {
		return Legacy, nil
	}
	if legacyErr != nil {
		return NFT, nil
	}
	nft, err := Save(ctx, run, NFT, "")
	if err != nil {
		return "", fmt.Errorf("detect iptables flavour: %w", err)
	}
	inNFT, inLegacy := HasChain(nft, ours), HasChain(legacy, ours)
	switch {
	case inNFT && !inLegacy:
		return NFT, nil
	case inLegacy && !inNFT:
		return Legacy, nil
	case CountRules(legacy) > CountRules(nft):
		return Legacy, nil
	}
	return NFT, nil
}

// Save runs the flavour's iptables-save for one table ("" for all). A
// missing program is an error wrapping exec.ErrNotFound.
func Save(ctx context.Context, run RunFunc, f Flavour, table string, args ...string) (string, error) {
	if table != "" {
		args = append([]string{"-t", table}, args...)
	}
	out, err := run(ctx, "", f.Save(), args...)
	if err != nil {
		return "", fmt.Errorf("%s: %w", f.Save(), err)
	}
	return out, nil
}

// HasChain says the saved text declares one of the chains.
func HasChain(saved string, names ...string) bool {
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

// CountRules counts the rules in saved text.
func CountRules(saved string) int {
	n := 0
	for _, line := range strings.Split(saved, "\n") {
		if strings.HasPrefix(line, "-") {
			n++
		}
	}
	return n
}

// NotInstalled says err is a missing iptables program.
func NotInstalled(err error) bool { return errors.Is(err, exec.ErrNotFound) }
