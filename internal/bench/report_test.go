package bench

import (
	"encoding/json"
	"encoding/xml"
	"math"
	"strings"
	"testing"
)

func testReport() *Report {
	return &Report{
		Title:  "sync",
		Header: []string{"mode", "first sync"},
		Rows:   [][]string{{"nftables", Seconds(1.48)}, {"iptables", Seconds(0.0007)}},
		Runs:   []any{map[string]any{"mode": "nftables", "firstSyncSeconds": 1.48}, map[string]any{"mode": "iptables"}},
		Notes:  []string{"target met"},
		Chart: &Chart{Title: "first sync", Unit: "seconds", Labels: []string{"10k"},
			Series: []Series{{Name: "nftables", Values: []float64{1.48}}, {Name: "iptables", Values: []float64{math.NaN()}}}},
	}
}

func TestReportFormats(t *testing.T) {
	r := testReport()
	var table, md, js, svg strings.Builder
	for _, c := range []struct {
		format string
		w      *strings.Builder
	}{{"table", &table}, {"markdown", &md}, {"json", &js}} {
		if err := r.Write(c.w, c.format); err != nil {
			t.Fatal(err)
		}
	}
	if !strings.Contains(table.String(), "nftables  1.48 s") || !strings.Contains(table.String(), "700 µs") && !strings.Contains(table.String(), "0.7 ms") {
		t.Errorf("table:\n%s", table.String())
	}
	if !strings.Contains(md.String(), "| mode | first sync |\n|---|---|\n| nftables | 1.48 s |") || !strings.Contains(md.String(), "- target met") {
		t.Errorf("markdown:\n%s", md.String())
	}
	lines := strings.Split(strings.TrimSpace(js.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("json: %d lines, want one object per run:\n%s", len(lines), js.String())
	}
	var first map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &first); err != nil || first["firstSyncSeconds"] != 1.48 {
		t.Errorf("json run: %v %v", first, err)
	}
	if err := r.Write(&js, "yaml"); err == nil {
		t.Error("an unknown format is accepted")
	}
	if err := r.Chart.WriteSVG(&svg); err != nil {
		t.Fatal(err)
	}
	if err := xml.Unmarshal([]byte(svg.String()), new(struct{})); err != nil {
		t.Errorf("SVG is not well-formed XML: %v\n%s", err, svg.String())
	}
	if strings.Count(svg.String(), "<rect") != 1+1+2 { // background, one bar (NaN skipped), two legend boxes
		t.Errorf("SVG bars:\n%s", svg.String())
	}
}

func TestFormatting(t *testing.T) {
	for _, c := range []struct{ got, want string }{
		{Seconds(2.5), "2.50 s"}, {Seconds(0.0123), "12.3 ms"}, {Seconds(0.00005), "50 µs"}, {Seconds(math.NaN()), "-"},
		{Ratio(1.48, 1.15), "1.29×"}, {Ratio(1, 0), "-"},
	} {
		if c.got != c.want {
			t.Errorf("got %q, want %q", c.got, c.want)
		}
	}
}
