package nft

import (
	"strconv"
	"strings"
	"time"
)

// Family is an nftables address family.
type Family string

// The families kdive uses.
const (
	IPv4   Family = "ip"
	IPv6   Family = "ip6"
	Inet   Family = "inet"
	Bridge Family = "bridge"
)

// Table is a table: its family and name say which, Comment is what Add
// writes on it.
type Table struct {
	Family  Family
	Name    string
	Comment string
}

// String is "family name", as nft commands name the table.
func (t Table) String() string { return string(t.Family) + " " + t.Name }

// Chain is a chain of the transaction's table. A base chain has a Type and
// a Hook; Priority is a number or a name nft knows ("dstnat", "filter").
type Chain struct {
	Name     string
	Type     string // "nat", "filter"
	Hook     string // "prerouting", ...
	Priority string
	Policy   string // "accept" when empty on a base chain
	Comment  string
}

// Set is a set of the transaction's table. Type is its key's type
// ("ipv4_addr . inet_service"), or TypeOf its key's expression.
type Set struct {
	Name    string
	Type    string
	TypeOf  string
	Flags   []string // "interval", "timeout", "dynamic"
	Timeout time.Duration
	// AutoMerge merges adjacent and overlapping intervals as they are
	// added (an interval set's auto-merge).
	AutoMerge bool
	Comment   string
}

// Map is a map of the transaction's table: Type is "key type : value type"
// (TypeOf "key expression : value expression").
type Map struct {
	Name    string
	Type    string
	TypeOf  string
	Flags   []string
	Comment string
}

// Element is an element of a set (Set) or map (Map). Key and Value are its
// parts in nft syntax, joined with " . " (a concatenation); a map's Value
// may be a verdict ("goto chain").
type Element struct {
	Set     string
	Map     string
	Key     []string
	Value   []string
	Comment string
}

// Rule is a rule of a chain, in nft syntax. Deleting one needs its Handle.
type Rule struct {
	Chain   string
	Rule    string
	Comment string
	Handle  int
}

// Counter is a named counter of the transaction's table.
type Counter struct {
	Name    string
	Comment string
}

// Object is what a transaction operates on: *Table, *Chain, *Set, *Map,
// *Element, *Rule or *Counter.
type Object interface {
	// appendOp appends the command doing verb to the object in table t.
	appendOp(b []byte, verb verb, t Table) []byte
	isObject()
}

func (*Table) isObject()   {}
func (*Chain) isObject()   {}
func (*Set) isObject()     {}
func (*Map) isObject()     {}
func (*Element) isObject() {}
func (*Rule) isObject()    {}
func (*Counter) isObject() {}

type verb uint8

const (
	add verb = iota
	create
	del
	flush
)

func (v verb) String() string { return [...]string{"add", "create", "delete", "flush"}[v] }

func appendHead(b []byte, v verb, kind string, t Table) []byte {
	b = append(b, v.String()...)
	b = append(b, ' ')
	b = append(b, kind...)
	b = append(b, ' ')
	b = append(b, t.Family...)
	b = append(b, ' ')
	return append(b, t.Name...)
}

func appendComment(b []byte, c string) []byte {
	if c == "" {
		return b
	}
	b = append(b, " comment "...)
	return strconv.AppendQuote(b, c)
}

// The transaction's table is the one operated on; x gives the comment.
func (x *Table) appendOp(b []byte, v verb, t Table) []byte {
	b = appendHead(b, v, "table", t)
	if (v == add || v == create) && x.Comment != "" {
		b = append(b, " {"...)
		b = appendComment(b, x.Comment)
		b = append(b, "; }"...)
	}
	return b
}

func (c *Chain) appendOp(b []byte, v verb, t Table) []byte {
	b = appendHead(b, v, "chain", t)
	b = append(b, ' ')
	b = append(b, c.Name...)
	if v != add && v != create || c.Type == "" && c.Comment == "" {
		return b
	}
	b = append(b, " {"...)
	if c.Type != "" {
		policy := c.Policy
		if policy == "" {
			policy = "accept"
		}
		b = append(b, " type "+c.Type+" hook "+c.Hook+" priority "+c.Priority+"; policy "+policy+";"...)
	}
	if c.Comment != "" {
		b = appendComment(b, c.Comment)
		b = append(b, ';')
	}
	return append(b, " }"...)
}

func appendSetDecl(b []byte, typ, typeOf string, flags []string, timeout time.Duration, autoMerge bool, comment string) []byte {
	b = append(b, " {"...)
	if typeOf != "" {
		b = append(b, " typeof "+typeOf+";"...)
	} else {
		b = append(b, " type "+typ+";"...)
	}
	if len(flags) > 0 {
		b = append(b, " flags "+strings.Join(flags, ",")+";"...)
	}
	if timeout > 0 {
		b = append(b, " timeout "...)
		b = strconv.AppendInt(b, int64(timeout/time.Second), 10)
		b = append(b, "s;"...)
	}
	if autoMerge {
		b = append(b, " auto-merge;"...)
	}
	if comment != "" {
		b = appendComment(b, comment)
		b = append(b, ';')
	}
	return append(b, " }"...)
}

func (s *Set) appendOp(b []byte, v verb, t Table) []byte {
	b = appendHead(b, v, "set", t)
	b = append(b, ' ')
	b = append(b, s.Name...)
	if v == add || v == create {
		b = appendSetDecl(b, s.Type, s.TypeOf, s.Flags, s.Timeout, s.AutoMerge, s.Comment)
	}
	return b
}

func (m *Map) appendOp(b []byte, v verb, t Table) []byte {
	b = appendHead(b, v, "map", t)
	b = append(b, ' ')
	b = append(b, m.Name...)
	if v == add || v == create {
		b = appendSetDecl(b, m.Type, m.TypeOf, m.Flags, 0, false, m.Comment)
	}
	return b
}

// container is the set or map the element is in.
func (e *Element) container() string {
	if e.Map != "" {
		return e.Map
	}
	return e.Set
}

// appendBody appends "key comment "c" : value" (the value only when
// withValue).
func (e *Element) appendBody(b []byte, withValue bool) []byte {
	b = appendJoined(b, e.Key)
	if withValue {
		b = appendComment(b, e.Comment)
		if len(e.Value) > 0 {
			b = append(b, " : "...)
			b = appendJoined(b, e.Value)
		}
	}
	return b
}

func appendJoined(b []byte, parts []string) []byte {
	for i, p := range parts {
		if i > 0 {
			b = append(b, " . "...)
		}
		b = append(b, p...)
	}
	return b
}

func (e *Element) appendOp(b []byte, v verb, t Table) []byte {
	b = appendHead(b, v, "element", t)
	b = append(b, ' ')
	b = append(b, e.container()...)
	b = append(b, " { "...)
	b = e.appendBody(b, v != del)
	return append(b, " }"...)
}

func (r *Rule) appendOp(b []byte, v verb, t Table) []byte {
	b = appendHead(b, v, "rule", t)
	b = append(b, ' ')
	b = append(b, r.Chain...)
	if v == del {
		b = append(b, " handle "...)
		return strconv.AppendInt(b, int64(r.Handle), 10)
	}
	b = append(b, ' ')
	b = append(b, r.Rule...)
	return appendComment(b, r.Comment)
}

func (c *Counter) appendOp(b []byte, v verb, t Table) []byte {
	b = appendHead(b, v, "counter", t)
	b = append(b, ' ')
	b = append(b, c.Name...)
	if (v == add || v == create) && c.Comment != "" {
		b = append(b, " {"...)
		b = appendComment(b, c.Comment)
		b = append(b, "; }"...)
	}
	return b
}

// String is the element as nft writes it in a set: `key comment "c" :
// value`.
func (e *Element) String() string { return string(e.appendBody(nil, true)) }
