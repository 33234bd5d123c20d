package iptables

import (
	"math"
	"strconv"
)

// appendSave appends the rule as iptables-save prints it back (both
// flavours print the same): addresses with their length, -p before the
// matches, comments quoted, MARK as --set-xmark, REJECT with its default
// --reject-with, recent with its defaults, the probability as the kernel
// stores it. A full Sync compares these with what iptables-save printed
// and restores only the chains that differ.
func (r *Rule) appendSave(b []byte) []byte {
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
	if r.Comment != "" {
		b = append(b, ` -m comment --comment "`...)
		b = append(b, r.Comment...)
		b = append(b, '"')
	}
	if r.SrcType != "" || r.DstType != "" {
		b = append(b, " -m addrtype"...)
		if r.SrcType != "" {
			b = append(append(b, " --src-type "...), r.SrcType...)
		}
		if r.DstType != "" {
			b = append(append(b, " --dst-type "...), r.DstType...)
		}
	}
	if r.Recent != nil {
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
	}
	if r.Probability != 0 {
		b = append(b, " -m statistic --mode random --probability "...)
		b = strconv.AppendFloat(b, savedProbability(r.Probability), 'f', 11, 64)
	}
	if r.Proto != "" {
		b = append(append(b, " -m "...), r.Proto...)
		if r.DPort != 0 {
			b = append(b, " --dport "...)
			b = strconv.AppendUint(b, uint64(r.DPort), 10)
		}
	}
	if r.Mark != 0 {
		b = append(b, " -m mark"...)
		if r.NotMark {
			b = append(b, " !"...)
		}
		b = append(b, " --mark "...)
		b = appendMask(b, r.Mark, r.Mark)
	}
	if r.CtState != "" {
		b = append(b, " -m conntrack"...)
		if r.NotCtState {
			b = append(b, " !"...)
		}
		b = append(append(b, " --ctstate "...), r.CtState...)
	}
	if r.Jump == "" {
		return b
	}
	b = append(append(b, " -j "...), r.Jump...)
	switch r.Jump {
	case targetDNAT:
		b = append(b, " --to-destination "...)
		b = r.Endpoint.AppendTo(b)
	case targetMark:
		b = append(b, " --set-xmark "...)
		if r.MarkOr != 0 {
			b = appendMask(b, r.MarkOr, r.MarkOr)
		} else {
			b = appendMask(b, r.MarkXor, 0)
		}
	case targetMasquerade:
		b = append(b, " --random-fully"...)
	case targetReject:
		b = append(b, " --reject-with icmp-port-unreachable"...)
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
	written, _ := strconv.ParseFloat(probabilityText(p), 64)
	return math.Round(written*0x80000000) / 0x80000000
}

// sameAsSaved says whether the chain holds exactly these saved rules (the
// text after "-A CHAIN").
func (c *Chain) sameAsSaved(saved []string) bool {
	if len(saved) != len(c.Rules) {
		return false
	}
	var buf []byte
	for i := range c.Rules {
		buf = c.Rules[i].appendSave(buf[:0])
		if len(buf) == 0 || string(buf[1:]) != saved[i] {
			return false
		}
	}
	return true
}
