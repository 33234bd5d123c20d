package xtables

import (
	"errors"
	"strings"
)

// Saved is what iptables-save printed (either flavour), by table name.
type Saved map[string]*SavedTable

// SavedTable is one table of a Saved.
type SavedTable struct {
	// Order are the chains the table declares, in the order printed.
	Order []string
	// Rules are each chain's rules: the text after "-A CHAIN ".
	Rules    map[string][]string
	declared map[string]bool
}

// Declares says the table declares chain (it may have no rules).
func (t *SavedTable) Declares(chain string) bool { return t != nil && t.declared[chain] }

// Lines are chain's rules as iptables-save prints them: "-A CHAIN rule".
func (t *SavedTable) Lines(chain string) []string {
	if t == nil {
		return nil
	}
	out := make([]string, 0, len(t.Rules[chain]))
	for _, r := range t.Rules[chain] {
		out = append(out, "-A "+chain+" "+r)
	}
	return out
}

// ParseSave reads iptables-save output printed without -c (a rule's
// "[packets:bytes] " prefix is not understood here).
func ParseSave(out string) Saved {
	s := Saved{}
	var cur *SavedTable
	for line := range strings.Lines(out) {
		line = strings.TrimRight(line, "\n")
		switch {
		case strings.HasPrefix(line, "*"):
			cur = &SavedTable{declared: map[string]bool{}, Rules: map[string][]string{}}
			s[line[1:]] = cur
		case cur == nil:
		case strings.HasPrefix(line, ":"):
			name, _, _ := strings.Cut(line[1:], " ")
			if !cur.declared[name] {
				cur.declared[name] = true
				cur.Order = append(cur.Order, name)
			}
		case strings.HasPrefix(line, "-A "):
			chain, rule, _ := strings.Cut(line[3:], " ")
			cur.Rules[chain] = append(cur.Rules[chain], rule)
		}
	}
	return s
}

// SplitRule splits a saved rule into words; a double-quoted word (a
// comment) may hold spaces and backslash-escaped quotes. An unterminated
// quote is an error; the words are returned all the same, the last one
// running to the end.
func SplitRule(s string) ([]string, error) {
	var out []string
	for i := 0; i < len(s); {
		switch {
		case s[i] == ' ' || s[i] == '\t' || s[i] == '\n':
			i++
		case s[i] == '"':
			var b strings.Builder
			i++
			for ; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' && i+1 < len(s) {
					i++
				}
				b.WriteByte(s[i])
			}
			out = append(out, b.String())
			if i == len(s) {
				return out, errors.New("unterminated quote")
			}
			i++
		default:
			j := i
			for j < len(s) && s[j] != ' ' && s[j] != '\t' && s[j] != '\n' {
				j++
			}
			out = append(out, s[i:j])
			i = j
		}
	}
	return out, nil
}
