package xtables

import (
	"math"
	"net/netip"
	"strconv"
	"strings"
)

// String is the rule as iptables-save prints it after "-A CHAIN ".
func (r *Rule) String() string {
	b := r.AppendSave(nil)
	if len(b) == 0 {
		return ""
	}
	return string(b[1:])
}

// AppendSave appends " " and the rule as iptables-save prints it back
// (both flavours print the same): -s, -d and -p first, then the match
// modules in the order written; addresses with their length, comments
// quoted, MARK as --set-xmark, REJECT with its default --reject-with,
// recent with its defaults, the probability as the kernel stores it. The
// IPVS mode writes its rules in this form; the iptables mode compares it
// with what iptables-save printed to restore only the chains that differ.
func (r *Rule) AppendSave(b []byte) []byte {
	if r.Src.IsValid() {
		if r.NotSrc {
			b = append(b, " !"...)
		}
		b = append(b, " -s "...)
		b = r.Src.AppendTo(b)
	}
	if r.Dst.IsValid() {
		b = append(b, " -d "...)
		b = r.Dst.AppendTo(b)
	}
	if r.Proto != "" {
		b = append(b, " -p "...)
		b = append(b, r.Proto...)
	}
	var buf Order
	for _, m := range r.modules(&buf) {
		b = r.appendModule(b, m)
	}
	if r.Jump == "" {
		return b
	}
	b = append(append(b, " -j "...), r.Jump...)
	switch r.Jump {
	case DNAT:
		b = append(b, " --to-destination "...)
		b = r.ToDestination.AppendTo(b)
	case Mark:
		b = append(b, " --set-xmark "...)
		b = appendMask(b, r.MarkOr^r.MarkXor, r.MarkOr)
	case Masquerade:
		if r.RandomFully {
			b = append(b, " --random-fully"...)
		}
	case Reject:
		b = append(b, " --reject-with icmp-port-unreachable"...)
	case SetTarget:
		if r.MapSet != nil {
			b = r.MapSet.appendMap(b)
		}
	}
	return b
}

// appendMap appends SET's options.
func (m *SetMatch) appendMap(b []byte) []byte {
	b = append(append(append(append(b, " --map-set "...), m.Name...), ' '), m.Flags...)
	return append(b, " --map-mark"...)
}

// appendModule appends one match module as iptables-save prints it.
func (r *Rule) appendModule(b []byte, m Module) []byte {
	if !r.has(m) {
		return b
	}
	switch m {
	case ModComment:
		b = append(b, ` -m comment --comment `...)
		b = appendQuoted(b, r.Comment)
	case ModAddrType:
		b = append(b, " -m addrtype"...)
		if r.SrcLocal {
			b = append(b, " --src-type LOCAL"...)
		}
		if r.DstLocal {
			b = append(b, " --dst-type LOCAL"...)
		}
	case ModRecent:
		b = append(b, " -m recent"...)
		if r.Recent.Set {
			b = append(b, " --set"...)
		} else {
			b = append(b, " --rcheck --seconds "...)
			b = strconv.AppendInt(b, int64(r.Recent.Seconds), 10)
			b = append(b, " --reap"...)
		}
		b = append(append(b, " --name "...), r.Recent.Name...)
		b = append(b, " --mask 255.255.255.255 --rsource"...)
	case ModStatistic:
		b = append(b, " -m statistic --mode random --probability "...)
		b = strconv.AppendFloat(b, savedProbability(r.Probability), 'f', 11, 64)
	case ModProto:
		b = append(append(b, " -m "...), r.Proto...)
		if r.DPort != 0 {
			b = append(b, " --dport "...)
			b = strconv.AppendUint(b, uint64(r.DPort), 10)
		}
	case ModMark:
		b = append(b, " -m mark"...)
		if r.NotMark {
			b = append(b, " !"...)
		}
		b = append(b, " --mark "...)
		b = appendMask(b, r.Mark, r.Mark)
	case ModConntrack:
		b = append(b, " -m conntrack"...)
		if r.NotCtState {
			b = append(b, " !"...)
		}
		b = r.CtState.append(append(b, " --ctstate "...))
	case ModSet:
		b = append(b, " -m set"...)
		if r.Set.Not {
			b = append(b, " !"...)
		}
		b = append(append(append(append(b, " --match-set "...), r.Set.Name...), ' '), r.Set.Flags...)
	}
	return b
}

func appendMask(b []byte, v, mask uint32) []byte {
	b = strconv.AppendUint(append(b, "0x"...), uint64(v), 16)
	return strconv.AppendUint(append(b, "/0x"...), uint64(mask), 16)
}

// savedProbability is the probability as xt_statistic keeps it (in
// 1/2^31 steps) after parsing the text written (%0.10f).
func savedProbability(p float64) float64 {
	written, _ := strconv.ParseFloat(ProbabilityText(p), 64)
	return math.Round(written*0x80000000) / 0x80000000
}

// WriteKubeProxy writes " " and the rule as upstream kube-proxy writes it
// into its iptables-restore input, which the iptables mode keeps to the
// byte: matches in the usual order whatever Order says (comment,
// addrtype, recent, statistic, `-m tcp -p tcp`, -d, --dport, -s, mark,
// conntrack, set), a single address without its /32, a comment quoted
// only when it holds a space (or something to escape), MARK as --or-mark or --xor-mark, REJECT
// without --reject-with.
func (r *Rule) WriteKubeProxy(b *strings.Builder) {
	var scratch [64]byte
	if r.Comment != "" {
		b.WriteString(" -m comment --comment ")
		writeQuoted(b, r.Comment)
	}
	b.Write(r.appendModule(scratch[:0], ModAddrType))
	if r.Recent != nil {
		b.WriteString(" -m recent --name ")
		b.WriteString(r.Recent.Name)
		if r.Recent.Set {
			b.WriteString(" --set")
		} else {
			b.WriteString(" --rcheck --seconds ")
			b.Write(strconv.AppendInt(scratch[:0], int64(r.Recent.Seconds), 10))
			b.WriteString(" --reap")
		}
	}
	if r.Probability != 0 {
		b.WriteString(" -m statistic --mode random --probability ")
		b.WriteString(ProbabilityText(r.Probability))
	}
	if r.Proto != "" {
		if !r.BareProto {
			b.WriteString(" -m ")
			b.WriteString(r.Proto)
		}
		b.WriteString(" -p ")
		b.WriteString(r.Proto)
	}
	if r.Dst.IsValid() {
		b.WriteString(" -d ")
		writePrefix(b, r.Dst, scratch[:0])
	}
	if r.DPort != 0 {
		b.WriteString(" --dport ")
		b.Write(strconv.AppendUint(scratch[:0], uint64(r.DPort), 10))
	}
	if r.Src.IsValid() {
		if r.NotSrc {
			b.WriteString(" !")
		}
		b.WriteString(" -s ")
		writePrefix(b, r.Src, scratch[:0])
	}
	for _, m := range [...]Module{ModMark, ModConntrack, ModSet} {
		b.Write(r.appendModule(scratch[:0], m))
	}
	r.writeKubeProxyTarget(b, scratch[:0])
}

func (r *Rule) writeKubeProxyTarget(b *strings.Builder, scratch []byte) {
	if r.Jump == "" {
		return
	}
	b.WriteString(" -j ")
	b.WriteString(r.Jump)
	switch r.Jump {
	case DNAT:
		b.WriteString(" --to-destination ")
		b.Write(r.ToDestination.AppendTo(scratch))
	case Mark:
		switch {
		case r.MarkXor == 0:
			b.WriteString(" --or-mark ")
			writeHex(b, r.MarkOr)
		case r.MarkOr == 0:
			b.WriteString(" --xor-mark ")
			writeHex(b, r.MarkXor)
		default:
			b.WriteString(" --set-xmark ")
			b.Write(appendMask(scratch, r.MarkOr^r.MarkXor, r.MarkOr))
		}
	case Masquerade:
		if r.RandomFully {
			b.WriteString(" --random-fully")
		}
	case SetTarget:
		if r.MapSet != nil {
			b.Write(r.MapSet.appendMap(scratch))
		}
	}
}

// writeQuoted quotes a comment that has spaces (or anything to escape),
// as upstream does.
func writeQuoted(b *strings.Builder, s string) {
	if !strings.ContainsFunc(s, func(c rune) bool { return c == ' ' || c == '"' || c == '\\' || c < 0x20 || c == 0x7f }) {
		b.WriteString(s)
		return
	}
	b.Write(appendQuoted(nil, s))
}

// appendQuoted appends s in double quotes as iptables-restore reads a
// quoted word and iptables-save prints one: '"' and '\\' escaped with a
// backslash. Control characters (a newline would end the rule's line of
// restore input and start another) are printed as '?': Kubernetes names
// cannot hold them, and the proxy refuses names Kubernetes would refuse
// before they reach a rule (proxy.ServicePorts), so only a name that
// slipped past both would print them.
func appendQuoted(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c < 0x20 || c == 0x7f:
			b = append(b, '?')
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}

// writePrefix prints a single address without its /32, as upstream does.
func writePrefix(b *strings.Builder, p netip.Prefix, scratch []byte) {
	if p.IsSingleIP() {
		b.Write(p.Addr().AppendTo(scratch))
		return
	}
	b.Write(p.AppendTo(scratch))
}

func writeHex(b *strings.Builder, v uint32) {
	var buf [16]byte
	b.Write(strconv.AppendUint(append(buf[:0], "0x"...), uint64(v), 16))
}

// precomputed probabilities 1/n, as upstream formats them ("%0.10f").
var probabilities = func() []string {
	out := make([]string, 257)
	for n := 1; n < len(out); n++ {
		out[n] = strconv.FormatFloat(1/float64(n), 'f', 10, 64)
	}
	return out
}()

// ProbabilityText is p as upstream writes it (%0.10f).
func ProbabilityText(p float64) string {
	if n := int(1/p + 0.5); n > 0 && n < len(probabilities) && 1/float64(n) == p {
		return probabilities[n]
	}
	return strconv.FormatFloat(p, 'f', 10, 64)
}
