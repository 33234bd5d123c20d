package nftables

import (
	"encoding/base32"
	"hash/fnv"
	"strings"
	"unicode/utf8"

	"github.com/kdive/kdive/internal/model"
)

// Element comments. Each element of service-ips and firewall-ips carries
// the name of its service port as a comment, "namespace/name:port": it is
// how Inspect, `kdive show lb`, adoption and the drift check tell whose
// an element is. nft refuses a comment over maxComment bytes, and with it
// the whole transaction, while Kubernetes allows 63 + 1 + 63 + 1 + 15 =
// 143. A longer name is shortened: namespace, name and port are cut, the
// longest first, so that all three stay readable, and "~" and a hash of
// the full name end it. A 63-character namespace and name and a
// 15-character port keep 48, 49 and 15 characters:
//
//	team-payments-xxx…x/checkout-api-xxx…x:metrics-exporte~torifhoq4dozc
//
// "~" cannot occur in a Kubernetes name, so a shortened comment never
// equals a real name. Reading back, a shortened comment parses as a
// service port whose port ends with the hash; portNames resolves it to the
// full name when the reader knows it (the proxier knows the names it
// syncs; Inspect's callers may pass theirs to ResolveNames).

// maxComment is the longest comment nft takes: nft 1.0.6 refuses 129
// bytes ("comment too long, 128 characters maximum allowed") and lists
// 128 back whole.
const maxComment = 128

// elemComment is the comment of n's elements: n.String(), or, when that is
// too long, its shortened form. Names that fit are never changed, so
// tables written before shortening existed read back the same.
func elemComment(n model.ServicePortName) string {
	if commentLen(n) <= maxComment {
		return n.String()
	}
	full := n.String()
	suffix := "~" + shortHash(full)
	parts := []string{n.Namespace, n.Name, n.Port}
	seps := 2
	if n.Port == "" {
		parts, seps = parts[:2], 1
	}
	lens := fitLengths(parts, maxComment-len(suffix)-seps)
	var b strings.Builder
	for i, p := range parts {
		if i > 0 {
			b.WriteString([]string{"/", ":"}[i-1])
		}
		b.WriteString(p[:lens[i]])
	}
	b.WriteString(suffix)
	return b.String()
}

// commentLen is len(n.String()) without building it.
func commentLen(n model.ServicePortName) int {
	l := len(n.Namespace) + 1 + len(n.Name)
	if n.Port != "" {
		l += 1 + len(n.Port)
	}
	return l
}

// fitLengths says how many bytes of each part to keep so that they add up
// to at most avail: the longest part is cut first, and no part is cut
// inside a UTF-8 sequence.
func fitLengths(parts []string, avail int) []int {
	lens := make([]int, len(parts))
	total := 0
	for i, p := range parts {
		lens[i] = len(p)
		total += len(p)
	}
	for total > avail {
		longest := 0
		for i := range lens {
			if lens[i] > lens[longest] {
				longest = i
			}
		}
		if lens[longest] == 0 {
			break
		}
		lens[longest]--
		total--
	}
	for i, p := range parts {
		for lens[i] > 0 && lens[i] < len(p) && !utf8.RuneStart(p[lens[i]]) {
			lens[i]--
		}
	}
	return lens
}

// shortHash is a stable 13-character name for s: its 64-bit FNV-1a hash
// in lower-case base32.
func shortHash(s string) string {
	h := fnv.New64a()
	h.Write([]byte(s))
	return strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(h.Sum(nil)))
}

// portNames maps the service ports that shortened comments read back as
// (parsePortName of the comment, with the element's protocol) to the full
// names they were made from. Only names that needed shortening are in it.
type portNames map[model.ServicePortName]model.ServicePortName

// add makes n resolvable.
func (pn portNames) add(n model.ServicePortName) {
	if commentLen(n) <= maxComment {
		return
	}
	if short, err := parsePortName(elemComment(n), n.Protocol); err == nil {
		pn[short] = n
	}
}

// name is the full name of the port n was read as, or n.
func (pn portNames) name(n model.ServicePortName) model.ServicePortName {
	if full, ok := pn[n]; ok {
		return full
	}
	return n
}

// resolve renames, everywhere in what was read, the service ports whose
// comments were shortened and whose full names pn knows. Ports it does
// not know keep the names their comments give.
func (l *listing) resolve(pn portNames) {
	if len(pn) == 0 {
		return
	}
	for _, s := range l.rs.Sets {
		s.Service = pn.name(s.Service)
		for _, sl := range s.elems {
			sl.first.elem.Service = pn.name(sl.first.elem.Service)
		}
	}
	for _, c := range l.rs.Chains {
		c.Service = pn.name(c.Service)
	}
	for short, full := range pn {
		c, ok := l.counters[short]
		if !ok {
			continue
		}
		delete(l.counters, short)
		if sum := l.counters[full]; sum != nil {
			sum.Packets += c.Packets
			sum.Bytes += c.Bytes
		} else {
			l.counters[full] = c
		}
	}
}
