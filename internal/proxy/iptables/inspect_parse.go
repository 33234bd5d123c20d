package iptables

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"strconv"
	"strings"

	"github.com/kdive/kdive/internal/proxy"
	"github.com/kdive/kdive/internal/xtables"
)

// Reading iptables-save back into Rules: the inverse of appendSave, for
// the shapes kdive writes. Anything else in a kdive chain is an error, so
// that an inspection never explains a rule it did not understand.

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

// knownModules are the matches kdive writes.
var knownModules = map[string]bool{
	"comment": true, "addrtype": true, "recent": true, "statistic": true,
	"tcp": true, "udp": true, "sctp": true, "mark": true, "conntrack": true,
}

// parseSavedRule reads one rule as iptables-save prints it (the text after
// "-A CHAIN"). Options it does not know, or values the Rule cannot hold
// (an interface match, a negated destination, a mark with another mask),
// are errors.
func parseSavedRule(text string) (Rule, error) {
	words, err := xtables.SplitRule(text)
	if err != nil {
		return Rule{}, err
	}
	var r Rule
	neg, recentMode := false, false
	i := 0
	next := func(opt string) (string, error) {
		if i+1 >= len(words) {
			return "", fmt.Errorf("%s without a value", opt)
		}
		i++
		return words[i], nil
	}
	for ; i < len(words); i++ {
		opt := words[i]
		if opt == "!" {
			neg = true
			continue
		}
		if neg && opt != "-s" && opt != "--mark" && opt != "--ctstate" {
			return Rule{}, fmt.Errorf("negated %s", opt)
		}
		var v string
		switch opt {
		case "--set", "--rcheck", "--reap", "--rsource", "--random-fully":
		default:
			if v, err = next(opt); err != nil {
				return Rule{}, err
			}
		}
		switch opt {
		case "-s", "-d":
			p, err := parsePrefix(v)
			if err != nil {
				return Rule{}, err
			}
			if opt == "-s" {
				r.Src, r.NotSrc = p, neg
			} else {
				r.Dst = p
			}
		case "-p":
			if v != "tcp" && v != "udp" && v != "sctp" {
				return Rule{}, fmt.Errorf("protocol %q", v)
			}
			r.Proto = v
		case "-m":
			if !knownModules[v] {
				return Rule{}, fmt.Errorf("match -m %s", v)
			}
		case "--comment":
			r.Comment = v
		case "--src-type", "--dst-type":
			if v != "LOCAL" {
				return Rule{}, fmt.Errorf("%s %s", opt, v)
			}
			if opt == "--src-type" {
				r.SrcType = v
			} else {
				r.DstType = v
			}
		case "--set", "--rcheck", "--seconds", "--reap", "--name", "--mask", "--rsource":
			recentMode = recentMode || opt == "--set" || opt == "--rcheck"
			if err := parseRecent(&r, opt, v); err != nil {
				return Rule{}, err
			}
		case "--mode":
			if v != "random" {
				return Rule{}, fmt.Errorf("statistic mode %s", v)
			}
		case "--probability":
			p, err := strconv.ParseFloat(v, 64)
			if err != nil || p < 0 || p > 1 {
				return Rule{}, fmt.Errorf("probability %q", v)
			}
			// The Rule has no "never": a probability of 0 stays "sometimes"
			// for Trace, and a share of (almost) nothing for LB.
			r.Probability = max(p, math.SmallestNonzeroFloat64)
		case "--dport":
			n, err := strconv.ParseUint(v, 10, 16)
			if err != nil || n == 0 {
				return Rule{}, fmt.Errorf("port %q", v)
			}
			r.DPort = uint16(n)
		case "--mark":
			val, mask, err := parseMask(v)
			if err != nil || val != mask || val == 0 {
				return Rule{}, fmt.Errorf("mark %q", v)
			}
			r.Mark, r.NotMark = val, neg
		case "--ctstate":
			r.CtState, r.NotCtState = v, neg
		case "-j":
			r.Jump = v
		case "--to-destination", "--set-xmark", "--or-mark", "--xor-mark", "--random-fully", "--reject-with":
			if err := parseTargetOption(&r, opt, v); err != nil {
				return Rule{}, err
			}
		default:
			return Rule{}, fmt.Errorf("option %s", opt)
		}
		neg = false
	}
	if neg {
		return Rule{}, errors.New("dangling !")
	}
	if r.Recent != nil && (r.Recent.Name == "" || !recentMode) {
		return Rule{}, errors.New("recent without --name, --set or --rcheck")
	}
	if r.Jump == targetDNAT && !r.Endpoint.IsValid() || r.Jump == targetMark && r.MarkOr == 0 && r.MarkXor == 0 {
		return Rule{}, fmt.Errorf("-j %s without its value", r.Jump)
	}
	return r, nil
}

func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		return p.Masked(), err
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return hostPrefix(a), nil
}

// parseRecent reads the options of -m recent: only the set and rcheck
// that kdive writes, on the whole source address.
func parseRecent(r *Rule, opt, v string) error {
	if r.Recent == nil {
		r.Recent = &Recent{}
	}
	switch opt {
	case "--set":
		r.Recent.Set = true
	case "--rcheck":
		r.Recent.Set = false
	case "--seconds":
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return fmt.Errorf("recent --seconds %q", v)
		}
		r.Recent.Seconds = n
	case "--name":
		r.Recent.Name = v
	case "--mask":
		if v != "255.255.255.255" {
			return fmt.Errorf("recent --mask %s", v)
		}
	}
	return nil
}

func parseTargetOption(r *Rule, opt, v string) error {
	want := map[string]string{
		"--to-destination": targetDNAT, "--set-xmark": targetMark, "--or-mark": targetMark,
		"--xor-mark": targetMark, "--random-fully": targetMasquerade, "--reject-with": targetReject,
	}[opt]
	if r.Jump != want {
		return fmt.Errorf("%s with -j %s", opt, r.Jump)
	}
	switch opt {
	case "--to-destination":
		ap, err := netip.ParseAddrPort(v)
		if err != nil {
			return fmt.Errorf("DNAT to %q", v)
		}
		r.Endpoint = ap
	case "--set-xmark":
		val, mask, err := parseMask(v)
		switch {
		case err != nil:
			return fmt.Errorf("MARK %q", v)
		case val == mask:
			r.MarkOr = val // (mark & ^val) ^ val
		case mask == 0:
			r.MarkXor = val
		default:
			return fmt.Errorf("MARK --set-xmark %s", v)
		}
	case "--or-mark", "--xor-mark":
		n, err := strconv.ParseUint(v, 0, 32)
		if err != nil {
			return fmt.Errorf("MARK %q", v)
		}
		if opt == "--or-mark" {
			r.MarkOr = uint32(n)
		} else {
			r.MarkXor = uint32(n)
		}
	}
	return nil
}

// parseMask reads "value/mask"; a bare value has the full mask.
func parseMask(s string) (val, mask uint32, err error) {
	vs, ms, hasMask := strings.Cut(s, "/")
	v, err := strconv.ParseUint(vs, 0, 32)
	if err != nil {
		return 0, 0, err
	}
	m := uint64(math.MaxUint32)
	if hasMask {
		if m, err = strconv.ParseUint(ms, 0, 32); err != nil {
			return 0, 0, err
		}
	}
	return uint32(v), uint32(m), nil
}
