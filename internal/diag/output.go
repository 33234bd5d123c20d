package diag

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// Format is how a report is written.
type Format string

const (
	// FormatTable is for people: aligned columns, as kubectl prints.
	FormatTable Format = "table"
	// FormatJSON is for scripts: the field names documented in the
	// package doc are stable.
	FormatJSON Format = "json"
)

// ParseFormat reads an -o value; empty means table.
func ParseFormat(s string) (Format, error) {
	switch Format(s) {
	case "", FormatTable:
		return FormatTable, nil
	case FormatJSON:
		return FormatJSON, nil
	}
	return "", fmt.Errorf("output format %q: must be table or json", s)
}

// Output is where and how a report goes.
type Output struct {
	Format Format
	W      io.Writer
}

// JSON writes v indented, with a final newline.
func (o Output) JSON(v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = o.W.Write(append(b, '\n'))
	return err
}

// Table writes rows under a header in aligned columns; an empty cell is
// printed as "-".
func (o Output) Table(header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(o.W, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		cells := make([]string, len(r))
		for i, c := range r {
			if c == "" {
				c = "-"
			}
			cells[i] = c
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	return tw.Flush()
}

// Notes writes what could not be known, after a table.
func (o Output) Notes(notes []string) error {
	for _, n := range notes {
		if _, err := fmt.Fprintf(o.W, "note: %s\n", n); err != nil {
			return err
		}
	}
	return nil
}
