package nftables

import (
	"regexp"
	"slices"

	"github.com/kdive/kdive/internal/model"
)

// String is the table as one nft script (`nft -f`) that creates it.
func (rs *Ruleset) String() string {
	var w scriptWriter
	rs.write(&w, true)
	return w.String()
}

// staticChains are written first, in this order; other chains follow by name.
var staticChains = []string{
	chainPrerouting, chainOutput, chainPostrouting, chainServices, chainMasquerading,
	chainMarkMasq, chainClusterIPMasq, chainReject,
}

// ChainNames are the chain names in the order String writes them.
func (rs *Ruleset) ChainNames() []string {
	var names, rest []string
	for _, n := range staticChains {
		if rs.Chains[n] != nil {
			names = append(names, n)
		}
	}
	for n := range rs.Chains {
		if !slices.Contains(staticChains, n) {
			rest = append(rest, n)
		}
	}
	slices.Sort(rest)
	return append(names, rest...)
}

// SetNames are the set and map names, sorted.
func (rs *Ruleset) SetNames() []string {
	names := make([]string, 0, len(rs.Sets))
	for n := range rs.Sets {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// write writes the table block; elements in key order when sorted (the
// kernel does not care, and sorting 100,000 elements takes a while).
func (rs *Ruleset) write(w *scriptWriter, sorted bool) {
	if w.b == nil {
		n := 4096
		for _, s := range rs.Sets {
			n += 64 * len(s.elems)
		}
		w.b = make([]byte, 0, n)
	}
	w.owner(model.ServicePortName{})
	w.line("table " + Family + " " + Table + " {")
	w.line("\tcomment \"kdive service proxy\"")
	for _, name := range rs.SetNames() {
		s := rs.Sets[name]
		w.owner(s.Service)
		w.line("\t" + s.keyword() + " " + s.Name + " {")
		w.line("\t\t" + s.decl())
		if len(s.elems) > 0 {
			w.line("\t\telements = {")
			slots := s.sortedSlots
			if !sorted {
				slots = s.slots
			}
			for _, sl := range slots() {
				e := sl.first.elem
				w.owner(e.Service)
				w.b = append(w.b, "\t\t\t"...)
				w.b = e.appendText(w.b, s.Kind)
				w.line(",")
			}
			w.owner(s.Service)
			w.line("\t\t}")
		}
		w.line("\t}")
	}
	for _, name := range rs.ChainNames() {
		c := rs.Chains[name]
		w.owner(c.Service)
		w.line("\tchain " + c.Name + " {")
		if c.Hook != nil {
			w.line("\t\t" + c.Hook.String())
		}
		for _, r := range c.Rules {
			w.line("\t\t" + r.String())
		}
		w.line("\t}")
	}
	w.owner(model.ServicePortName{})
	w.line("}")
}

// scriptWriter builds an nft script and remembers which service port each
// line is for, so that an error nft reports at a line names the service.
type scriptWriter struct {
	b     []byte
	lines int
	marks []ownerMark
}

type ownerMark struct {
	line  int // first line (1-based) of this owner's stretch
	owner model.ServicePortName
}

// owner says which service port the next lines are for (zero: shared).
func (w *scriptWriter) owner(o model.ServicePortName) {
	n := len(w.marks)
	switch {
	case n > 0 && w.marks[n-1].owner == o:
	case n > 0 && w.marks[n-1].line == w.lines+1: // no line of the previous owner yet
		w.marks[n-1].owner = o
		if n > 1 && w.marks[n-2].owner == o {
			w.marks = w.marks[:n-1]
		}
	default:
		w.marks = append(w.marks, ownerMark{line: w.lines + 1, owner: o})
	}
}

// line ends the current line with s.
func (w *scriptWriter) line(s string) {
	w.b = append(w.b, s...)
	w.b = append(w.b, '\n')
	w.lines++
}

func (w *scriptWriter) String() string { return string(w.b) }

// ownerAt is the service port (or "") that line belongs to.
func (w *scriptWriter) ownerAt(line int) string {
	i, found := slices.BinarySearchFunc(w.marks, line, func(m ownerMark, l int) int { return m.line - l })
	if !found {
		i--
	}
	if i < 0 {
		return ""
	}
	return svcName(w.marks[i].owner)
}

var nftErrLine = regexp.MustCompile(`(?m)/dev/stdin:(\d+):`)

// owners names the service ports of the given script lines.
func (w *scriptWriter) owners(lines []int) []string {
	var out []string
	for _, n := range lines {
		if o := w.ownerAt(n); o != "" && !slices.Contains(out, o) {
			out = append(out, o)
		}
	}
	return out
}
