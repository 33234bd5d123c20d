package iptables

import (
	"errors"
	"strconv"
	"strings"

	"github.com/kdive/kdive/internal/proxy"
	"github.com/kdive/kdive/internal/xtables"
)

// Reading iptables-save back into Rules (xtables.ParseRule). Anything
// else in a kdive chain is an error, so that an inspection never explains
// a rule it did not understand.

// savedCounters strips the "[packets:bytes] " prefix iptables-save -c puts
// before each rule and returns the output without them (for parseSave)
// and the counters of each chain's rules, in order.
func savedCounters(out string) (string, map[chainKey][]proxy.Counters) {
	counts := map[chainKey][]proxy.Counters{}
	var b strings.Builder
	b.Grow(len(out))
	var table Table
	for line := range strings.Lines(out) {
		switch {
		case strings.HasPrefix(line, "*"):
			table = Table(strings.TrimSpace(line[1:]))
		case strings.HasPrefix(line, "["):
			end := strings.Index(line, "] ")
			if end < 0 {
				break
			}
			var c proxy.Counters
			pk, by, _ := strings.Cut(line[1:end], ":")
			c.Packets, _ = strconv.ParseUint(pk, 10, 64)
			c.Bytes, _ = strconv.ParseUint(by, 10, 64)
			line = line[end+2:]
			if rest, ok := strings.CutPrefix(line, "-A "); ok {
				chain, _, _ := strings.Cut(rest, " ")
				k := chainKey{table, strings.TrimSpace(chain)}
				counts[k] = append(counts[k], c)
			}
		}
		b.WriteString(line)
	}
	return b.String(), counts
}

// parseSavedRule reads one rule as iptables-save prints it (the text after
// "-A CHAIN", xtables.ParseRule). The IPVS mode's ipset matches and SET
// target are errors here: the iptables mode writes neither and its
// walker knows no ipsets.
func parseSavedRule(text string) (Rule, error) {
	x, err := xtables.ParseRule(text)
	switch {
	case err != nil:
		return Rule{}, err
	case x.Set != nil:
		return Rule{}, errors.New("match -m set")
	case x.MapSet != nil:
		return Rule{}, errors.New("-j SET")
	}
	r := Rule{Rule: x}
	if x.Jump == targetDNAT {
		r.Endpoint = x.ToDestination
	}
	return r, nil
}
