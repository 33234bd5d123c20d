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
	"github.com/kdive/kdive/internal/proxy"
)

// Reading the kernel's table back: `nft -j list table ip kdive-proxy`
// parsed into the same Ruleset values Render builds, so that Trace and
// `kdive show lb` run over what the kernel holds. Only the shapes this
// package writes are understood; anything else (a rule someone added by
// hand, a set of another type) is an error naming the object, because a
// table we cannot read faithfully must be reported, not explained wrongly.

// ErrUnknownShape is wrapped by errors for objects of the table that
// kdive never writes.
var ErrUnknownShape = errors.New("not a shape kdive writes")

// UnknownRuleError is a rule of the table that does not parse into the
// Ruleset's rules.
type UnknownRuleError struct {
	Chain  string
	Handle int
	// Text is the rule as `nft -a list chain` prints it, when known.
	Text string
	// Reason says which part was not understood.
	Reason string
}

func (e *UnknownRuleError) Error() string {
	rule := fmt.Sprintf("rule handle %d", e.Handle)
	if e.Text != "" {
		rule += fmt.Sprintf(" %q", e.Text)
	}
	return fmt.Sprintf("chain %s %s: %v: %s", e.Chain, rule, ErrUnknownShape, e.Reason)
}

func (e *UnknownRuleError) Unwrap() error { return ErrUnknownShape }

// listing is what parseListing reads besides the Ruleset: counters of
// service-ips elements, per service port.
type listing struct {
	rs       *Ruleset
	counters map[model.ServicePortName]*proxy.Counters
}

type jsonSet struct {
	Family  string           `json:"family"`
	Table   string           `json:"table"`
	Name    string           `json:"name"`
	Type    any              `json:"type"`
	Map     any              `json:"map"`
	Flags   []string         `json:"flags"`
	Timeout int              `json:"timeout"`
	Elem    []any            `json:"elem"`
	Stmt    []map[string]any `json:"stmt"`
}

type jsonChain struct {
	Family string `json:"family"`
	Table  string `json:"table"`
	Name   string `json:"name"`
	Type   string `json:"type"`
	Hook   string `json:"hook"`
	Prio   *int   `json:"prio"`
	Policy string `json:"policy"`
}

type jsonRule struct {
	Family string `json:"family"`
	Table  string `json:"table"`
	Chain  string `json:"chain"`
	Handle int    `json:"handle"`
	Expr   []any  `json:"expr"`
}

// parseListing reads `nft -j list table ip kdive-proxy`.
func parseListing(data []byte) (*listing, error) {
	var top struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal(data, &top); err != nil {
		return nil, fmt.Errorf("parse nft listing: %w", err)
	}
	l := &listing{
		rs:       &Ruleset{Chains: map[string]*Chain{}, Sets: map[string]*Set{}},
		counters: map[model.ServicePortName]*proxy.Counters{},
	}
	var rules []jsonRule
	table := false
	for _, o := range top.Nftables {
		for kind, raw := range o {
			var err error
			switch kind {
			case "metainfo":
			case "table":
				var t struct{ Family, Name string }
				err = json.Unmarshal(raw, &t)
				table = table || t.Family == Family && t.Name == Table
			case "set", "map":
				var s jsonSet
				if err = json.Unmarshal(raw, &s); err == nil {
					err = l.addSet(kind, &s)
				}
			case "chain":
				var c jsonChain
				if err = json.Unmarshal(raw, &c); err == nil {
					err = l.addChain(&c)
				}
			case "rule":
				var r jsonRule
				if err = json.Unmarshal(raw, &r); err == nil {
					rules = append(rules, r)
				}
			default:
				err = fmt.Errorf("%w: a %s object", ErrUnknownShape, kind)
			}
			if err != nil {
				return nil, fmt.Errorf("parse nft listing: %w", err)
			}
		}
	}
	if !table {
		return nil, fmt.Errorf("parse nft listing: no table %s %s", Family, Table)
	}
	for _, r := range rules {
		c := l.rs.Chains[r.Chain]
		if c == nil || r.Family != Family || r.Table != Table {
			return nil, fmt.Errorf("parse nft listing: rule handle %d of unknown chain %s %s %s", r.Handle, r.Family, r.Table, r.Chain)
		}
		rule, err := parseRule(r.Expr)
		if err != nil {
			return nil, &UnknownRuleError{Chain: r.Chain, Handle: r.Handle, Reason: err.Error()}
		}
		c.Rules = append(c.Rules, rule)
	}
	l.attribute()
	return l, nil
}

func (l *listing) addChain(c *jsonChain) error {
	if c.Family != Family || c.Table != Table {
		return fmt.Errorf("chain %s of table %s %s", c.Name, c.Family, c.Table)
	}
	ch := &Chain{Name: c.Name}
	if c.Hook != "" || c.Type != "" {
		if c.Type != "nat" || c.Prio == nil || c.Policy != "accept" {
			return fmt.Errorf("chain %s: %w: type %s hook %s policy %s", c.Name, ErrUnknownShape, c.Type, c.Hook, c.Policy)
		}
		ch.Hook = &Hook{Type: c.Type, Hook: c.Hook, Priority: *c.Prio}
	}
	l.rs.Chains[c.Name] = ch
	return nil
}

// setKinds are the declarations each kind of set lists with in JSON:
// "type" (joined with " . "), "map" (the value type; "" for a set) and
// the flags.
var setKinds = []struct {
	kind       SetKind
	typ, value string
	flags      string
}{
	{ServiceVerdicts, "ipv4_addr . inet_proto . inet_service", "verdict", ""},
	{EndpointBuckets, "ipv4_addr . inet_proto . inet_service . integer", "ipv4_addr . inet_service", ""},
	{AddrPairs, "ipv4_addr . ipv4_addr", "", ""},
	{Prefixes, "ipv4_addr", "", "interval"},
	{Clients, "ipv4_addr", "", "timeout"},
}

func (l *listing) addSet(kw string, s *jsonSet) error {
	if s.Family != Family || s.Table != Table {
		return fmt.Errorf("%s %s of table %s %s", kw, s.Name, s.Family, s.Table)
	}
	typ := jsJoinType(s.Type)
	value := jsJoinType(s.Map)
	flags := slices.DeleteFunc(slices.Clone(s.Flags), func(f string) bool { return f == "dynamic" })
	set := &Set{Name: s.Name, elems: map[mkey]*slot{}}
	for _, k := range setKinds {
		if k.typ == typ && k.value == value && strings.Join(flags, ",") == k.flags {
			set.Kind = k.kind
		}
	}
	for _, st := range s.Stmt { // `counter` in a declaration: each element counts
		if _, ok := st["counter"]; !ok || len(st) != 1 {
			set.Kind = 0
		}
	}
	if set.Kind == 0 || set.Kind == Clients && s.Timeout <= 0 {
		return fmt.Errorf("%s %s: %w: type %s : %s flags %v", kw, s.Name, ErrUnknownShape, typ, value, s.Flags)
	}
	set.Timeout = s.Timeout
	for _, raw := range s.Elem {
		e, c, err := parseElem(set.Kind, raw)
		if err != nil {
			return fmt.Errorf("%s %s: %w: element %s: %v", kw, s.Name, ErrUnknownShape, jsCompact(raw), err)
		}
		k := e.Key.m()
		set.elems[k] = &slot{key: k, first: claim{elem: e}}
		if c != nil && set.Name == setServiceIPs {
			sum := l.counters[e.Service]
			if sum == nil {
				sum = &proxy.Counters{}
				l.counters[e.Service] = sum
			}
			sum.Packets += c.Packets
			sum.Bytes += c.Bytes
		}
	}
	l.rs.Sets[s.Name] = set
	return nil
}

func jsJoinType(t any) string {
	switch t := t.(type) {
	case string:
		return t
	case []any:
		parts := make([]string, len(t))
		for i, p := range t {
			parts[i] = fmt.Sprint(p)
		}
		return strings.Join(parts, " . ")
	}
	return ""
}

// parseElem reads one element: a key (with, in a map, its value); keys
// with a comment or counter come wrapped as {"elem": {"val": key, ...}}.
func parseElem(kind SetKind, raw any) (Element, *proxy.Counters, error) {
	var e Element
	var value any
	if pair, ok := raw.([]any); ok {
		if len(pair) != 2 {
			return e, nil, errors.New("not a key : value pair")
		}
		raw, value = pair[0], pair[1]
	}
	var comment string
	var counters *proxy.Counters
	if w, ok := jsField(raw, "elem"); ok {
		m, _ := w.(map[string]any)
		raw = m["val"]
		comment, _ = m["comment"].(string)
		if c, ok := m["counter"].(map[string]any); ok {
			counters = &proxy.Counters{Packets: uint64(jsNum(c["packets"])), Bytes: uint64(jsNum(c["bytes"]))}
		}
	}
	if (value != nil) != (kind == ServiceVerdicts || kind == EndpointBuckets) {
		return e, nil, errors.New("value does not fit the set's type")
	}
	var err error
	switch kind {
	case ServiceVerdicts, EndpointBuckets:
		parts := jsConcat(raw)
		n := 3
		if kind == EndpointBuckets {
			n = 4
		}
		if len(parts) != n {
			return e, nil, errors.New("key is not address . protocol . port")
		}
		if e.Key.Addr, err = jsAddr(parts[0]); err != nil {
			return e, nil, err
		}
		if e.Key.Proto, err = jsProto(parts[1]); err != nil {
			return e, nil, err
		}
		if e.Key.Port, err = jsPort(parts[2]); err != nil {
			return e, nil, err
		}
		if kind == ServiceVerdicts {
			if e.Service, err = parsePortName(comment, e.Key.Proto); err != nil {
				return e, nil, err
			}
			e.Verdict, err = parseVerdict(value)
			return e, counters, err
		}
		if e.Key.Bucket, err = jsPort(parts[3]); err != nil {
			return e, nil, err
		}
		to := jsConcat(value)
		if len(to) != 2 {
			return e, nil, errors.New("value is not address . port")
		}
		a, err1 := jsAddr(to[0])
		p, err2 := jsPort(to[1])
		e.Endpoint = netip.AddrPortFrom(a, p)
		return e, counters, errors.Join(err1, err2)
	case AddrPairs:
		parts := jsConcat(raw)
		if len(parts) != 2 {
			return e, nil, errors.New("key is not address . address")
		}
		a, err1 := jsAddr(parts[0])
		b, err2 := jsAddr(parts[1])
		e.Key.Addr, e.Key.Addr2 = a, b
		return e, nil, errors.Join(err1, err2)
	case Prefixes:
		p, err := jsPrefix(raw)
		e.Key.Addr, e.Key.Bits = p.Addr(), int8(p.Bits())
		return e, nil, err
	}
	e.Key.Addr, err = jsAddr(raw) // Clients
	return e, nil, err
}

// parsePortName reads an element's comment, "namespace/name:port". A
// shortened one (elemComment) reads as the port "port~hash" of the cut
// namespace and name; portNames resolves it.
func parsePortName(s string, proto model.Protocol) (model.ServicePortName, error) {
	ns, rest, ok := strings.Cut(s, "/")
	if !ok || ns == "" || rest == "" {
		return model.ServicePortName{}, fmt.Errorf("comment %q does not name a service port", s)
	}
	name, p, _ := strings.Cut(rest, ":")
	return model.ServicePortName{Namespace: ns, Name: name, Port: p, Protocol: proto}, nil
}

// attribute fills in what Render records and the kernel does not list:
// the service port of endpoint-map elements (from the service-ips element
// of the same key) and of each port's own chains and sets (those its
// elements lead to, by name: affinity-, endpoint-, external-<port>,
// firewall-, service-), and the endpoint of affinity chains and sets.
func (l *listing) attribute() {
	rs := l.rs
	owner := map[mkey]model.ServicePortName{}
	for _, name := range []string{setFirewallIPs, setServiceIPs} {
		s := rs.Sets[name]
		if s == nil || s.Kind != ServiceVerdicts {
			continue
		}
		for _, sl := range s.elems {
			e := sl.first.elem
			owner[ElemKey{Addr: e.Key.Addr, Proto: e.Key.Proto, Port: e.Key.Port}.m()] = e.Service
			for _, c := range reachable(rs, e.Verdict) {
				if ch := rs.Chains[c]; ch != nil && portOwned(c) {
					ch.Service = e.Service
				}
			}
		}
	}
	for _, s := range rs.Sets {
		if s.Kind != EndpointBuckets {
			continue
		}
		for _, sl := range s.elems {
			k := sl.first.elem.Key
			k.Bucket = 0
			sl.first.elem.Service = owner[k.m()]
		}
	}
	for _, c := range rs.Chains {
		var ep netip.AddrPort
		var clients string
		for _, r := range c.Rules {
			switch s := r.Stmt.(type) {
			case DNAT:
				ep = s.To
			case UpdateSaddr:
				clients = s.Set
			}
		}
		if ep.IsValid() && clients != "" {
			c.Endpoint = ep
			if s := rs.Sets[clients]; s != nil {
				s.Service, s.Endpoint = c.Service, ep
			}
		}
	}
}

// portOwned says whether a chain name is one a single service port owns
// (rather than a shared one: the fixed chains and those per endpoint
// count).
func portOwned(name string) bool {
	for _, p := range []string{"cluster-ip-local-", "cluster-ip-", "external-", "local-endpoints-", "endpoints-"} {
		if n, ok := strings.CutPrefix(name, p); ok {
			if _, err := strconv.Atoi(n); err == nil {
				return false
			}
		}
	}
	return !slices.Contains(staticChains, name)
}

// reachable lists the chains a verdict leads to, directly or through the
// jumps, gotos and numgen maps of those chains, in the order first met.
func reachable(rs *Ruleset, v Verdict) []string {
	var out []string
	var visit func(name string)
	visit = func(name string) {
		c := rs.Chains[name]
		if c == nil || slices.Contains(out, name) {
			return
		}
		out = append(out, name)
		for _, r := range c.Rules {
			switch s := r.Stmt.(type) {
			case Verdict:
				if s.Kind == Jump || s.Kind == Goto {
					visit(s.Chain)
				}
			case NumgenVMap:
				for _, ch := range s.Chains {
					visit(ch)
				}
			}
		}
	}
	if v.Kind == Jump || v.Kind == Goto {
		visit(v.Chain)
	}
	return out
}
