package verify

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
)

// Marks of a result in the table.
const (
	markPass = "✓"
	markFail = "✗"
	markSkip = "-"
)

// maxDetails bounds the detail lines the table shows under a failed check
// (JSON has them all).
const maxDetails = 5

// WriteTable prints a report for people: one row per check with ✓, ✗ or
// - (skipped), what was measured or why it failed, and under a failure
// the first failed probes.
func (r *Report) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\tCHECK\tRESULT")
	passed, failed, skipped := 0, 0, 0
	for _, res := range r.Results {
		mark, text := markPass, res.Summary
		switch {
		case res.Skipped:
			mark, text = markSkip, "skipped: "+res.Reason
			skipped++
		case !res.OK:
			mark, text = markFail, res.Reason
			failed++
		default:
			passed++
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", mark, res.Name, text)
		if !res.OK {
			for i, d := range res.Details {
				if i == maxDetails {
					fmt.Fprintf(tw, "\t\t  … and %d more\n", len(res.Details)-maxDetails)
					break
				}
				fmt.Fprintf(tw, "\t\t  %s\n", d)
			}
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	verdict := "OK"
	if !r.OK {
		verdict = "FAILED"
	}
	what := "lab " + r.Lab
	if r.Lab == "" {
		what = "cluster " + r.Cluster
	}
	mode := r.ProxyMode
	if mode == "" {
		mode = "proxy mode unknown"
	}
	_, err := fmt.Fprintf(w, "\n%s (%s): %d checks, %d passed, %d failed, %d skipped: %s\n",
		what, mode, passed+failed+skipped, passed, failed, skipped, verdict)
	return err
}

// WriteJSON prints a report for scripts; the field names are stable.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}
