package nft

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Listing is a table as read back from the kernel. nft 1.0.6's JSON
// leaves out a table's comment and a set's "dynamic" flag.
type Listing struct {
	Table    Table
	Chains   []Chain
	Sets     []ListedSet
	Maps     []ListedMap
	Rules    []ListedRule
	Counters []ListedCounter
}

// ListedSet is a set and its elements.
type ListedSet struct {
	Set
	Elements []Element
	// Stmts names the statements of the declaration ("counter": each
	// element counts).
	Stmts []string
}

// ListedMap is a map and its elements.
type ListedMap struct {
	Map
	Elements []Element
	Stmts    []string
}

// ListedRule is a rule with its handle and, as nft's JSON, its
// expressions (Rule.Rule is empty: nft lists no text in JSON).
type ListedRule struct {
	Rule
	Expr json.RawMessage
}

// ListedCounter is a named counter and its values.
type ListedCounter struct {
	Counter
	Packets, Bytes uint64
}

// Set is the set named name, or nil.
func (l *Listing) Set(name string) *ListedSet {
	return named(l.Sets, name, func(s *ListedSet) string { return s.Name })
}

// Map is the map named name, or nil.
func (l *Listing) Map(name string) *ListedMap {
	return named(l.Maps, name, func(m *ListedMap) string { return m.Name })
}

// Chain is the chain named name, or nil.
func (l *Listing) Chain(name string) *Chain {
	return named(l.Chains, name, func(c *Chain) string { return c.Name })
}

// Counter is the counter named name, or nil.
func (l *Listing) Counter(name string) *ListedCounter {
	return named(l.Counters, name, func(c *ListedCounter) string { return c.Name })
}

// named is the element of xs called name, or nil.
func named[T any](xs []T, name string, nameOf func(*T) string) *T {
	for i := range xs {
		if nameOf(&xs[i]) == name {
			return &xs[i]
		}
	}
	return nil
}

type jsonSet struct {
	Name    string                       `json:"name"`
	Type    json.RawMessage              `json:"type"`
	Map     json.RawMessage              `json:"map"`
	Flags   []string                     `json:"flags"`
	Timeout int64                        `json:"timeout"`
	Comment string                       `json:"comment"`
	Elem    []json.RawMessage            `json:"elem"`
	Stmt    []map[string]json.RawMessage `json:"stmt"`
}

// ParseListing reads `nft -j list table` output.
func ParseListing(data []byte) (*Listing, error) {
	var top struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal(data, &top); err != nil {
		return nil, fmt.Errorf("parse nft listing: %w", err)
	}
	l := &Listing{}
	for _, o := range top.Nftables {
		for kind, raw := range o {
			if err := l.add(kind, raw); err != nil {
				return nil, fmt.Errorf("parse nft listing: %s: %w", kind, err)
			}
		}
	}
	if l.Table.Name == "" {
		return nil, errors.New("parse nft listing: no table")
	}
	return l, nil
}

func (l *Listing) add(kind string, raw json.RawMessage) error {
	switch kind {
	case "metainfo":
	case "table":
		var t struct {
			Family  Family `json:"family"`
			Name    string `json:"name"`
			Comment string `json:"comment"`
		}
		if err := json.Unmarshal(raw, &t); err != nil {
			return err
		}
		l.Table = Table{Family: t.Family, Name: t.Name, Comment: t.Comment}
	case "chain":
		var c struct {
			Name    string `json:"name"`
			Type    string `json:"type"`
			Hook    string `json:"hook"`
			Prio    *int   `json:"prio"`
			Policy  string `json:"policy"`
			Comment string `json:"comment"`
		}
		if err := json.Unmarshal(raw, &c); err != nil {
			return err
		}
		ch := Chain{Name: c.Name, Type: c.Type, Hook: c.Hook, Policy: c.Policy, Comment: c.Comment}
		if c.Prio != nil {
			ch.Priority = strconv.Itoa(*c.Prio)
		}
		l.Chains = append(l.Chains, ch)
	case "set", "map":
		var s jsonSet
		if err := json.Unmarshal(raw, &s); err != nil {
			return err
		}
		typ, err := typeName(s.Type)
		if err != nil {
			return fmt.Errorf("%s: %w", s.Name, err)
		}
		var stmts []string
		for _, st := range s.Stmt {
			for k := range st {
				stmts = append(stmts, k)
			}
		}
		elems := make([]Element, 0, len(s.Elem))
		for _, raw := range s.Elem {
			e, err := parseElement(raw, kind == "map")
			if err != nil {
				return fmt.Errorf("%s: %w", s.Name, err)
			}
			elems = append(elems, e)
		}
		if kind == "set" {
			for i := range elems {
				elems[i].Set = s.Name
			}
			l.Sets = append(l.Sets, ListedSet{Set: Set{Name: s.Name, Type: typ, Flags: s.Flags,
				Timeout: time.Duration(s.Timeout) * time.Second, Comment: s.Comment}, Elements: elems, Stmts: stmts})
			return nil
		}
		value, err := typeName(s.Map)
		if err != nil {
			return fmt.Errorf("%s: %w", s.Name, err)
		}
		for i := range elems {
			elems[i].Map = s.Name
		}
		l.Maps = append(l.Maps, ListedMap{Map: Map{Name: s.Name, Type: typ + " : " + value, Flags: s.Flags, Comment: s.Comment},
			Elements: elems, Stmts: stmts})
	case "rule":
		var r struct {
			Chain   string          `json:"chain"`
			Handle  int             `json:"handle"`
			Comment string          `json:"comment"`
			Expr    json.RawMessage `json:"expr"`
		}
		if err := json.Unmarshal(raw, &r); err != nil {
			return err
		}
		l.Rules = append(l.Rules, ListedRule{Rule: Rule{Chain: r.Chain, Handle: r.Handle, Comment: r.Comment}, Expr: r.Expr})
	case "counter":
		var c struct {
			Name    string `json:"name"`
			Comment string `json:"comment"`
			Packets uint64 `json:"packets"`
			Bytes   uint64 `json:"bytes"`
		}
		if err := json.Unmarshal(raw, &c); err != nil {
			return err
		}
		l.Counters = append(l.Counters, ListedCounter{Counter: Counter{Name: c.Name, Comment: c.Comment}, Packets: c.Packets, Bytes: c.Bytes})
	default:
		return fmt.Errorf("an object kdive does not read")
	}
	return nil
}

// typeName reads a set's type: a name, or a concatenation's names.
func typeName(raw json.RawMessage) (string, error) {
	if len(raw) == 0 {
		return "", nil
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s, nil
	}
	var parts []string
	if err := json.Unmarshal(raw, &parts); err != nil {
		return "", fmt.Errorf("type %s: %w", raw, err)
	}
	return strings.Join(parts, " . "), nil
}

// parseElement reads an element: a key, or in a map a [key, value] pair;
// a key with options (comment, counter, timeout) comes wrapped as
// {"elem": {"val": key, ...}}.
func parseElement(raw json.RawMessage, isMap bool) (Element, error) {
	var e Element
	var value json.RawMessage
	if isMap {
		var pair []json.RawMessage
		if err := json.Unmarshal(raw, &pair); err != nil || len(pair) != 2 {
			return e, fmt.Errorf("map element %s is not a key and a value", raw)
		}
		raw, value = pair[0], pair[1]
	}
	var w struct {
		Elem *struct {
			Val     json.RawMessage `json:"val"`
			Comment string          `json:"comment"`
		} `json:"elem"`
	}
	if raw[0] == '{' && json.Unmarshal(raw, &w) == nil && w.Elem != nil {
		raw, e.Comment = w.Elem.Val, w.Elem.Comment
	}
	var err error
	if e.Key, err = parts(raw); err != nil {
		return e, err
	}
	if value != nil {
		if e.Value, err = parts(value); err != nil {
			return e, err
		}
	}
	return e, nil
}

// parts renders a value in nft syntax, a concatenation part by part.
func parts(raw json.RawMessage) ([]string, error) {
	var obj struct {
		Concat []json.RawMessage `json:"concat"`
	}
	if len(raw) > 0 && raw[0] == '{' && json.Unmarshal(raw, &obj) == nil && obj.Concat != nil {
		out := make([]string, len(obj.Concat))
		for i, c := range obj.Concat {
			v, err := value(c)
			if err != nil {
				return nil, err
			}
			out[i] = v
		}
		return out, nil
	}
	v, err := value(raw)
	if err != nil {
		return nil, err
	}
	return []string{v}, nil
}

// value renders one JSON value in nft syntax: a string or number, a
// prefix ("10.0.0.0/8"), a range ("a-b"), or a verdict ("goto chain",
// "accept").
func value(raw json.RawMessage) (string, error) {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s, nil
	}
	var n json.Number
	if json.Unmarshal(raw, &n) == nil {
		return n.String(), nil
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil || len(obj) != 1 {
		return "", fmt.Errorf("value %s: not one nft knows", raw)
	}
	for k, v := range obj {
		switch k {
		case "prefix":
			var p struct {
				Addr json.RawMessage `json:"addr"`
				Len  int             `json:"len"`
			}
			if err := json.Unmarshal(v, &p); err != nil {
				return "", fmt.Errorf("prefix %s: %w", v, err)
			}
			a, err := value(p.Addr)
			if err != nil {
				return "", err
			}
			return a + "/" + strconv.Itoa(p.Len), nil
		case "range":
			var r []json.RawMessage
			if err := json.Unmarshal(v, &r); err != nil || len(r) != 2 {
				return "", fmt.Errorf("range %s: not two values", v)
			}
			a, err := value(r[0])
			if err != nil {
				return "", err
			}
			b, err := value(r[1])
			if err != nil {
				return "", err
			}
			return a + "-" + b, nil
		case "goto", "jump":
			var t struct {
				Target string `json:"target"`
			}
			if err := json.Unmarshal(v, &t); err != nil {
				return "", fmt.Errorf("%s %s: %w", k, v, err)
			}
			return k + " " + t.Target, nil
		case "accept", "drop", "continue", "return":
			return k, nil
		}
	}
	return "", fmt.Errorf("value %s: not one kdive reads", raw)
}
