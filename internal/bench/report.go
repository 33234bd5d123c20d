// Package bench measures kdive's modes side by side (`kdive bench`): the
// proxy's control-plane cost (sync), the datapath through services
// (datapath), and pod-to-pod paths per encapsulation (encap). Every run
// builds throwaway network namespaces of its own, sends traffic only
// between them, is bounded in count and time, and removes them.
//
// A run produces a Report: a table (people), markdown (docs), JSON (one
// object per run, for scripts) and optionally an SVG bar chart. Ratios are
// always against a baseline measured in the same run (the one-shot floor
// for sync, pod-to-pod direct for datapath, a bare veth for encap).
package bench

import (
	"encoding/json"
	"fmt"
	"html"
	"io"
	"math"
	"strings"
	"text/tabwriter"
)

// Report is what a bench command prints.
type Report struct {
	Title string `json:"title"`
	// Header and Rows are the table; cells are already formatted.
	Header []string   `json:"-"`
	Rows   [][]string `json:"-"`
	// Runs are the machine-readable results, one object per run, printed
	// by -o json.
	Runs []any `json:"runs"`
	// Notes are printed under the table: targets met or missed, what
	// could not run and why.
	Notes []string `json:"notes,omitempty"`
	// Chart is drawn by --svg.
	Chart *Chart `json:"-"`
}

// Chart is a grouped horizontal bar chart: one group per label, one bar
// per series.
type Chart struct {
	Title  string
	Unit   string
	Labels []string
	Series []Series
}

// Series is one kind of bar.
type Series struct {
	Name   string
	Values []float64 // per label; NaN for none
}

// WriteTable prints the report for people.
func (r *Report) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "%s\n\n", r.Title)
	fmt.Fprintln(tw, strings.Join(r.Header, "\t"))
	for _, row := range r.Rows {
		fmt.Fprintln(tw, strings.Join(row, "\t"))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, n := range r.Notes {
		if _, err := fmt.Fprintln(w, "  "+n); err != nil {
			return err
		}
	}
	return nil
}

// WriteMarkdown prints the report as a markdown section.
func (r *Report) WriteMarkdown(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "### %s\n\n", r.Title)
	b.WriteString("| " + strings.Join(r.Header, " | ") + " |\n")
	b.WriteString("|" + strings.Repeat("---|", len(r.Header)) + "\n")
	for _, row := range r.Rows {
		b.WriteString("| " + strings.Join(row, " | ") + " |\n")
	}
	if len(r.Notes) > 0 {
		b.WriteString("\n")
		for _, n := range r.Notes {
			b.WriteString("- " + n + "\n")
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteJSON prints one JSON object per run, one per line.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	for _, run := range r.Runs {
		if err := enc.Encode(run); err != nil {
			return err
		}
	}
	return nil
}

// Write prints the report in a format: table, json or markdown.
func (r *Report) Write(w io.Writer, format string) error {
	switch format {
	case "", "table":
		return r.WriteTable(w)
	case "json":
		return r.WriteJSON(w)
	case "markdown":
		return r.WriteMarkdown(w)
	}
	return fmt.Errorf("output format %q: want table, json or markdown", format)
}

var palette = []string{"#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948"}

// WriteSVG draws the chart: a horizontal bar per series in each label's
// group, with its value written at the end of the bar.
func (c *Chart) WriteSVG(w io.Writer) error {
	const (
		left, right, top = 190, 90, 50
		barH, gap        = 16, 14
		width            = 820
	)
	max := 0.0
	for _, s := range c.Series {
		for _, v := range s.Values {
			if !math.IsNaN(v) && v > max {
				max = v
			}
		}
	}
	if max == 0 {
		max = 1
	}
	groupH := barH*len(c.Series) + gap
	height := top + groupH*len(c.Labels) + 20 + 20*len(c.Series)
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="10" y="22" font-size="15" font-weight="bold">%s</text>`+"\n", html.EscapeString(c.Title))
	fmt.Fprintf(&b, `<text x="10" y="40" fill="#555">%s</text>`+"\n", html.EscapeString(c.Unit))
	scale := float64(width-left-right) / max
	for i, label := range c.Labels {
		y0 := top + i*groupH
		fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="end">%s</text>`+"\n", left-8, y0+groupH/2, html.EscapeString(label))
		for j, s := range c.Series {
			if i >= len(s.Values) || math.IsNaN(s.Values[i]) {
				continue
			}
			v := s.Values[i]
			y := y0 + j*barH
			fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%.1f" height="%d" fill="%s"/>`+"\n", left, y, math.Max(v*scale, 1), barH-2, palette[j%len(palette)])
			fmt.Fprintf(&b, `<text x="%.1f" y="%d">%s</text>`+"\n", float64(left)+math.Max(v*scale, 1)+4, y+barH-5, formatValue(v))
		}
	}
	ly := top + groupH*len(c.Labels) + 10
	for j, s := range c.Series {
		y := ly + 20*j
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="12" height="12" fill="%s"/>`+"\n", left, y, palette[j%len(palette)])
		fmt.Fprintf(&b, `<text x="%d" y="%d">%s</text>`+"\n", left+18, y+11, html.EscapeString(s.Name))
	}
	b.WriteString("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

func formatValue(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.3g", v)
	}
}

// Seconds formats a duration in seconds for tables: "1.48 s", "0.7 ms".
func Seconds(s float64) string {
	switch {
	case math.IsNaN(s):
		return "-"
	case s >= 1:
		return fmt.Sprintf("%.2f s", s)
	case s >= 0.001:
		return fmt.Sprintf("%.1f ms", s*1000)
	default:
		return fmt.Sprintf("%.0f µs", s*1e6)
	}
}

// Ratio formats a/b as "1.29×".
func Ratio(a, b float64) string {
	if b == 0 || math.IsNaN(a) || math.IsNaN(b) {
		return "-"
	}
	return fmt.Sprintf("%.2f×", a/b)
}
