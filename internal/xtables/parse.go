package xtables

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Reading iptables-save back into Rules: the inverse of AppendSave, for
// the shapes kdive writes. Anything else is an error, so that an
// inspection never traces a rule it did not understand.

// modules are the match modules a Rule holds, by name.
var modules = map[string]Module{
	"comment": ModComment, "addrtype": ModAddrType, "recent": ModRecent, "statistic": ModStatistic,
	"tcp": ModProto, "udp": ModProto, "sctp": ModProto, "mark": ModMark, "conntrack": ModConntrack, "set": ModSet,
}

// optionModule is the module each match option belongs to.
var optionModule = map[string]Module{
	"--comment": ModComment, "--src-type": ModAddrType, "--dst-type": ModAddrType,
	"--set": ModRecent, "--rcheck": ModRecent, "--seconds": ModRecent, "--reap": ModRecent, "--name": ModRecent,
	"--mask": ModRecent, "--rsource": ModRecent, "--mode": ModStatistic, "--probability": ModStatistic,
	"--dport": ModProto, "--mark": ModMark, "--ctstate": ModConntrack, "--match-set": ModSet,
}

// flagOptions take no value.
var flagOptions = map[string]bool{
	"--set": true, "--rcheck": true, "--reap": true, "--rsource": true, "--random-fully": true, "--map-mark": true,
}

// ParseRule reads one rule as iptables-save prints it (the text after
// "-A CHAIN"). Options it does not know, or values a Rule cannot hold (an
// interface match, a negated destination, a mark with another mask), are
// errors.
func ParseRule(text string) (Rule, error) {
	words, err := SplitRule(text)
	if err != nil {
		return Rule{}, err
	}
	p := ruleParser{words: words}
	return p.parse()
}

type ruleParser struct {
	words []string
	i     int
	r     Rule
	// seen are the modules in the order met; protoModule is the -m of
	// the protocol.
	seen        []Module
	protoModule string
	recentMode  bool
}

// next is opt's value: a word, which only a comment's may be empty or
// hold spaces and quotes (they are printed as they are).
func (p *ruleParser) next(opt string) (string, error) {
	if p.i+1 >= len(p.words) {
		return "", fmt.Errorf("%s without a value", opt)
	}
	p.i++
	v := p.words[p.i]
	if opt != "--comment" && (v == "" || strings.ContainsAny(v, " \t\n\"\\")) {
		return "", fmt.Errorf("%s %q", opt, v)
	}
	return v, nil
}

func (p *ruleParser) see(m Module) {
	if !slices.Contains(p.seen, m) {
		p.seen = append(p.seen, m)
	}
}

func (p *ruleParser) parse() (Rule, error) {
	neg := false
	for ; p.i < len(p.words); p.i++ {
		opt := p.words[p.i]
		if opt == "!" {
			neg = true
			continue
		}
		if neg && opt != "-s" && opt != "--mark" && opt != "--ctstate" && opt != "--match-set" {
			return Rule{}, fmt.Errorf("negated %s", opt)
		}
		var v string
		if !flagOptions[opt] {
			var err error
			if v, err = p.next(opt); err != nil {
				return Rule{}, err
			}
		}
		if m, ok := optionModule[opt]; ok {
			p.see(m)
		}
		if err := p.option(opt, v, neg); err != nil {
			return Rule{}, err
		}
		neg = false
	}
	if neg {
		return Rule{}, errors.New("dangling !")
	}
	return p.finish()
}

// option reads one option and its value.
func (p *ruleParser) option(opt, v string, neg bool) error {
	r := &p.r
	switch opt {
	case "-s", "-d":
		pf, err := parsePrefix(v)
		if err != nil {
			return err
		}
		if opt == "-s" {
			r.Src, r.NotSrc = pf, neg
		} else {
			r.Dst = pf
		}
	case "-p":
		if v != "tcp" && v != "udp" && v != "sctp" {
			return fmt.Errorf("protocol %q", v)
		}
		r.Proto = v
	case "-m":
		m, ok := modules[v]
		if !ok {
			return fmt.Errorf("match -m %s", v)
		}
		if m == ModProto {
			p.protoModule = v
		}
		p.see(m)
	case "--comment":
		r.Comment = v
	case "--src-type", "--dst-type":
		if v != "LOCAL" {
			return fmt.Errorf("%s %s", opt, v)
		}
		if opt == "--src-type" {
			r.SrcLocal = true
		} else {
			r.DstLocal = true
		}
	case "--set", "--rcheck", "--seconds", "--reap", "--name", "--mask", "--rsource":
		p.recentMode = p.recentMode || opt == "--set" || opt == "--rcheck"
		return parseRecent(r, opt, v)
	case "--mode":
		if v != "random" {
			return fmt.Errorf("statistic mode %s", v)
		}
	case "--probability":
		pr, err := strconv.ParseFloat(v, 64)
		if err != nil || pr < 0 || pr > 1 {
			return fmt.Errorf("probability %q", v)
		}
		// A Rule has no "never": a probability of 0 stays "sometimes"
		// for a trace, and a share of (almost) nothing for a table.
		r.Probability = max(pr, math.SmallestNonzeroFloat64)
	case "--dport":
		n, err := strconv.ParseUint(v, 10, 16)
		if err != nil || n == 0 {
			return fmt.Errorf("port %q", v)
		}
		r.DPort = uint16(n)
	case "--mark":
		val, mask, err := parseMask(v)
		if err != nil || val != mask || val == 0 {
			return fmt.Errorf("mark %q", v)
		}
		r.Mark, r.NotMark = val, neg
	case "--ctstate":
		c, err := parseCtState(v)
		if err != nil {
			return err
		}
		r.CtState, r.NotCtState = c, neg
	case "--match-set":
		flags, err := p.next(opt)
		if err != nil {
			return err
		}
		r.Set = &SetMatch{Name: v, Flags: flags, Not: neg}
	case "-j":
		if r.Jump != "" {
			return errors.New("two targets")
		}
		r.Jump = v
	case "--to-destination", "--set-xmark", "--or-mark", "--xor-mark", "--random-fully", "--reject-with", "--map-set", "--map-mark":
		return p.targetOption(opt, v)
	default:
		return fmt.Errorf("option %s", opt)
	}
	return nil
}

// finish checks the rule is whole and records the order of its modules
// when it is not the usual one.
func (p *ruleParser) finish() (Rule, error) {
	r := p.r
	if r.Recent != nil && (r.Recent.Name == "" || !p.recentMode) {
		return Rule{}, errors.New("recent without --name, --set or --rcheck")
	}
	switch {
	case r.Jump == DNAT && !r.ToDestination.IsValid(), r.Jump == Mark && r.MarkOr == 0 && r.MarkXor == 0,
		r.Jump == SetTarget && r.MapSet == nil:
		return Rule{}, fmt.Errorf("-j %s without its value", r.Jump)
	}
	if p.protoModule != "" && p.protoModule != r.Proto || r.DPort != 0 && r.Proto == "" {
		return Rule{}, fmt.Errorf("match -m %s or --dport with -p %q", p.protoModule, r.Proto)
	}
	if r.Recent != nil && r.Recent.Set && r.Recent.Seconds != 0 {
		return Rule{}, errors.New("recent --seconds with --set")
	}
	r.BareProto = r.Proto != "" && !slices.Contains(p.seen, ModProto)
	var written []Module
	for _, m := range p.seen {
		if r.has(m) {
			written = append(written, m)
		}
	}
	var buf Order
	usual := r.modules(&buf)
	if !slices.Equal(written, usual) {
		copy(r.Order[:], written)
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
	return netip.PrefixFrom(a, a.BitLen()), nil
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

// targetOption reads an option of the rule's target.
func (p *ruleParser) targetOption(opt, v string) error {
	r := &p.r
	want := map[string]string{
		"--to-destination": DNAT, "--set-xmark": Mark, "--or-mark": Mark, "--xor-mark": Mark,
		"--random-fully": Masquerade, "--reject-with": Reject, "--map-set": SetTarget, "--map-mark": SetTarget,
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
		r.ToDestination = ap
	case "--set-xmark":
		// (mark &^ mask) ^ value is (mark | mask) ^ (mask ^ value).
		val, mask, err := parseMask(v)
		if err != nil {
			return fmt.Errorf("MARK %q", v)
		}
		r.MarkOr, r.MarkXor = mask, mask^val
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
	case "--random-fully":
		r.RandomFully = true
	case "--map-set":
		flags, err := p.next(opt)
		if err != nil {
			return err
		}
		r.MapSet = &SetMatch{Name: v, Flags: flags}
	case "--map-mark":
		if r.MapSet == nil {
			return errors.New("--map-mark without --map-set")
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

// JumpTarget is the chain or target a saved rule jumps (or goes) to.
func JumpTarget(rule string) string {
	f := strings.Fields(rule)
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "-j" || f[i] == "-g" || f[i] == "--jump" || f[i] == "--goto" {
			return f[i+1]
		}
	}
	return ""
}
