package nftables

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/kdive/kdive/internal/model"
)

// Rule expressions of `nft -j` listings, read into the Ruleset's matches
// and statements: exactly the shapes rules.go prints, nothing else.

// parseRule reads a rule's expressions: matches, then one statement.
func parseRule(exprs []any) (Rule, error) {
	var r Rule
	for i, x := range exprs {
		k, v, ok := jsSingle(x)
		if !ok {
			return r, fmt.Errorf("expression %s", jsCompact(x))
		}
		if k == "match" {
			if r.Stmt != nil {
				return r, fmt.Errorf("match %s after the statement", jsCompact(x))
			}
			m, err := parseMatch(v)
			if err != nil {
				return r, err
			}
			r.Match = append(r.Match, m)
			continue
		}
		if r.Stmt != nil || i != len(exprs)-1 {
			return r, fmt.Errorf("statement %s is not the rule's last expression", jsCompact(x))
		}
		s, err := parseStmt(k, v)
		if err != nil {
			return r, err
		}
		r.Stmt = s
	}
	if r.Stmt == nil {
		return r, errors.New("no statement")
	}
	// `reject with tcp reset` needs `meta l4proto tcp`; nft adds the
	// match when it is missing and leaves it out of listings.
	tcp := L4Proto{Proto: model.ProtocolTCP}
	if r.Stmt == (Reject{TCPReset: true}) && !slices.Contains(r.Match, Match(tcp)) {
		r.Match = append(r.Match, tcp)
	}
	return r, nil
}

func parseMatch(v any) (Match, error) {
	m, _ := v.(map[string]any)
	op, _ := m["op"].(string)
	left, right := m["left"], m["right"]
	bad := fmt.Errorf("match %s", jsCompact(v))
	eq, ne := op == "==", op == "!="
	switch {
	case jsIsPayload(left, "ip", "saddr") && (eq || ne):
		if set, ok := jsSetRef(right); ok {
			return SaddrInSet{Set: set, Not: ne}, nil
		}
		items := []any{right}
		if s, ok := jsField(right, "set"); ok {
			items, _ = s.([]any)
		}
		var ps []netip.Prefix
		for _, it := range items {
			p, err := jsPrefix(it)
			if err != nil {
				return nil, bad
			}
			ps = append(ps, p)
		}
		if len(ps) == 0 {
			return nil, bad
		}
		return SaddrInPrefixes{Prefixes: ps, Not: ne}, nil
	case eq && right == "local" && jsIsFibSaddrType(left):
		return FibSaddrLocal{}, nil
	case (eq || op == "in") && right == "dnat" && jsIsKeyed(left, "ct", "status"):
		return CtDNAT{}, nil
	case eq && jsIsAddrPair(left):
		if set, ok := jsSetRef(right); ok {
			return AddrPairInSet{Set: set}, nil
		}
	case eq && right == float64(0):
		if and, ok := jsField(left, "&"); ok {
			if a, _ := and.([]any); len(a) == 2 && jsIsKeyed(a[0], "meta", "mark") {
				if mark, ok := a[1].(float64); ok {
					return MarkUnset{Mark: uint32(mark)}, nil
				}
			}
		}
	case eq && jsIsKeyed(left, "meta", "l4proto"):
		if p, err := jsProto(right); err == nil {
			return L4Proto{Proto: p}, nil
		}
	}
	return nil, bad
}

func parseStmt(k string, v any) (Stmt, error) {
	bad := fmt.Errorf("statement %s", jsCompact(map[string]any{k: v}))
	switch k {
	case "accept", "drop", "return", "jump", "goto":
		return parseVerdict(map[string]any{k: v})
	case "vmap":
		m, _ := v.(map[string]any)
		key := m["key"]
		if set, ok := jsSetRef(m["data"]); ok && jsIsServiceKey(jsConcat(key)) {
			return ServiceVMap{Map: set}, nil
		}
		n, ok := jsNumgen(key)
		data, _ := jsField(m["data"], "set")
		pairs, _ := data.([]any)
		if !ok || len(pairs) != n {
			return nil, bad
		}
		chains := make([]string, n)
		for _, p := range pairs {
			kv, _ := p.([]any)
			if len(kv) != 2 {
				return nil, bad
			}
			i, isNum := kv[0].(float64)
			vd, err := parseVerdict(kv[1])
			if !isNum || i < 0 || int(i) >= n || err != nil || vd.Kind != Goto || chains[int(i)] != "" {
				return nil, bad
			}
			chains[int(i)] = vd.Chain
		}
		return NumgenVMap{Chains: chains}, nil
	case "dnat":
		m, _ := v.(map[string]any)
		if mp, ok := jsField(m["addr"], "map"); ok && m["family"] == "ip" && m["port"] == nil && len(m) == 2 {
			mm, _ := mp.(map[string]any)
			parts := jsConcat(mm["key"])
			set, isSet := jsSetRef(mm["data"])
			if len(parts) == 4 && jsIsServiceKey(parts[:3]) && isSet {
				if n, ok := jsNumgen(parts[3]); ok {
					return DNATMap{Map: set, N: n}, nil
				}
			}
			return nil, bad
		}
		a, err1 := jsAddr(m["addr"])
		p, err2 := jsPort(m["port"])
		if err1 != nil || err2 != nil || len(m) != 2 {
			return nil, bad
		}
		return DNAT{To: netip.AddrPortFrom(a, p)}, nil
	case "mangle":
		m, _ := v.(map[string]any)
		if !jsIsKeyed(m["key"], "meta", "mark") {
			return nil, bad
		}
		for op, xor := range map[string]bool{"|": false, "^": true} {
			if x, ok := jsField(m["value"], op); ok {
				if a, _ := x.([]any); len(a) == 2 && jsIsKeyed(a[0], "meta", "mark") {
					if mark, ok := a[1].(float64); ok {
						return SetMark{Mark: uint32(mark), Xor: xor}, nil
					}
				}
			}
		}
	case "masquerade":
		m, _ := v.(map[string]any)
		if f := m["flags"]; len(m) == 1 && (f == "fully-random" || jsJoinType(f) == "fully-random") {
			return Masquerade{}, nil
		}
	case "reject":
		m, _ := v.(map[string]any)
		switch {
		case len(m) == 1 && m["type"] == "tcp reset":
			return Reject{TCPReset: true}, nil
		case v == nil || len(m) == 2 && m["type"] == "icmp" && m["expr"] == "port-unreachable":
			return Reject{}, nil
		}
	case "set":
		m, _ := v.(map[string]any)
		if set, ok := jsSetRef(m["set"]); ok && m["op"] == "update" && jsIsPayload(m["elem"], "ip", "saddr") && len(m) == 3 {
			return UpdateSaddr{Set: set}, nil
		}
	}
	return nil, bad
}

func parseVerdict(x any) (Verdict, error) {
	k, v, ok := jsSingle(x)
	if !ok {
		return Verdict{}, fmt.Errorf("verdict %s", jsCompact(x))
	}
	kinds := map[string]VerdictKind{"accept": Accept, "drop": Drop, "return": Return, "jump": Jump, "goto": Goto}
	kind := kinds[k]
	switch kind {
	case 0:
		return Verdict{}, fmt.Errorf("verdict %s", jsCompact(x))
	case Jump, Goto:
		target, _ := jsField(v, "target")
		name, ok := target.(string)
		if !ok || name == "" {
			return Verdict{}, fmt.Errorf("verdict %s", jsCompact(x))
		}
		return Verdict{Kind: kind, Chain: name}, nil
	}
	if v != nil {
		return Verdict{}, fmt.Errorf("verdict %s", jsCompact(x))
	}
	return Verdict{Kind: kind}, nil
}

// single is an object's one key and value.
func jsSingle(x any) (string, any, bool) {
	m, ok := x.(map[string]any)
	if !ok || len(m) != 1 {
		return "", nil, false
	}
	for k, v := range m {
		return k, v, true
	}
	return "", nil, false
}

// field is x[k] when x is the object {k: ...}.
func jsField(x any, k string) (any, bool) {
	key, v, ok := jsSingle(x)
	if !ok || key != k {
		return nil, false
	}
	return v, true
}

func jsConcat(x any) []any {
	v, _ := jsField(x, "concat")
	parts, _ := v.([]any)
	return parts
}

func jsSetRef(x any) (string, bool) {
	s, ok := x.(string)
	if !ok || !strings.HasPrefix(s, "@") || len(s) == 1 {
		return "", false
	}
	return s[1:], true
}

// isKeyed is {what: {"key": key}} (meta mark, ct status...).
func jsIsKeyed(x any, what, key string) bool {
	v, ok := jsField(x, what)
	m, _ := v.(map[string]any)
	return ok && len(m) == 1 && m["key"] == key
}

func jsIsPayload(x any, proto, f string) bool {
	v, ok := jsField(x, "payload")
	m, _ := v.(map[string]any)
	return ok && len(m) == 2 && m["protocol"] == proto && m["field"] == f
}

func jsIsFibSaddrType(x any) bool {
	v, ok := jsField(x, "fib")
	m, _ := v.(map[string]any)
	return ok && len(m) == 2 && m["result"] == "type" && jsJoinType(m["flags"]) == "saddr"
}

func jsIsAddrPair(x any) bool {
	p := jsConcat(x)
	return len(p) == 2 && jsIsPayload(p[0], "ip", "saddr") && jsIsPayload(p[1], "ip", "daddr")
}

// isServiceKey is `ip daddr . meta l4proto . th dport`.
func jsIsServiceKey(p []any) bool {
	return len(p) == 3 && jsIsPayload(p[0], "ip", "daddr") && jsIsKeyed(p[1], "meta", "l4proto") && jsIsPayload(p[2], "th", "dport")
}

// numgen reads `numgen random mod N` (offset 0).
func jsNumgen(x any) (int, bool) {
	v, ok := jsField(x, "numgen")
	m, _ := v.(map[string]any)
	mod, isNum := m["mod"].(float64)
	if !ok || !isNum || mod < 1 || m["mode"] != "random" || jsNum(m["offset"]) != 0 || len(m) > 3 {
		return 0, false
	}
	return int(mod), true
}

func jsNum(x any) float64 {
	f, _ := x.(float64)
	return f
}

func jsAddr(x any) (netip.Addr, error) {
	s, _ := x.(string)
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() {
		return netip.Addr{}, fmt.Errorf("%s is not an IPv4 address", jsCompact(x))
	}
	return a, nil
}

func jsPrefix(x any) (netip.Prefix, error) {
	if v, ok := jsField(x, "prefix"); ok {
		m, _ := v.(map[string]any)
		a, err := jsAddr(m["addr"])
		bits, isNum := m["len"].(float64)
		if err != nil || !isNum || bits < 0 || bits > 32 || len(m) != 2 {
			return netip.Prefix{}, fmt.Errorf("prefix %s", jsCompact(x))
		}
		return netip.PrefixFrom(a, int(bits)).Masked(), nil
	}
	a, err := jsAddr(x)
	return netip.PrefixFrom(a, 32), err
}

func jsPort(x any) (uint16, error) {
	f, ok := x.(float64)
	if s, isStr := x.(string); isStr {
		n, err := strconv.ParseUint(s, 10, 16)
		f, ok = float64(n), err == nil
	}
	if !ok || f < 0 || f > 65535 || f != float64(int(f)) {
		return 0, fmt.Errorf("%s is not a port", jsCompact(x))
	}
	return uint16(f), nil
}

func jsProto(x any) (model.Protocol, error) {
	switch x {
	case "tcp":
		return model.ProtocolTCP, nil
	case "udp":
		return model.ProtocolUDP, nil
	case "sctp":
		return model.ProtocolSCTP, nil
	}
	return "", fmt.Errorf("%s is not tcp, udp or sctp", jsCompact(x))
}

func jsCompact(x any) string {
	b, err := json.Marshal(x)
	if err != nil {
		return fmt.Sprint(x)
	}
	return string(b)
}
