package bench

import (
	"math"
	"strings"
	"testing"
	"time"
)

func TestSummarize(t *testing.T) {
	var ds []time.Duration
	for i := 100; i >= 1; i-- {
		ds = append(ds, time.Duration(i)*time.Microsecond)
	}
	l := summarize(ds)
	if l.P50 != 50e-6 || l.P90 != 90e-6 || l.P99 != 99e-6 || l.Samples != 100 {
		t.Errorf("summarize 1..100 µs = %+v", l)
	}
	if l := summarize(nil); !math.IsNaN(l.P50) || l.Samples != 0 {
		t.Errorf("summarize(nil) = %+v", l)
	}
}

func TestDatapathReportTargets(t *testing.T) {
	run := func(mode string, n int, p50, via, direct float64) DatapathRun {
		return DatapathRun{Mode: mode, Services: n, P50Seconds: p50, P90Seconds: p50, P99Seconds: p50, Samples: 300,
			ThroughputBitsPerSecond: via, DirectBitsPerSecond: direct, ThroughputRatio: via / direct}
	}
	runs := []DatapathRun{
		run("nftables", 100, 80e-6, 10e9, 10e9), run("nftables", 10000, 90e-6, 9.5e9, 10e9),
		run("iptables", 100, 80e-6, 10e9, 10e9), run("iptables", 10000, 800e-6, 8e9, 10e9),
		{Mode: "ipvs", Unavailable: "kernel lacks ip_vs"},
	}
	rep := DatapathReport(runs, DatapathOptions{})
	notes := strings.Join(rep.Notes, "\n")
	for _, want := range []string{
		"nftables first-packet p50 at 10000 services is 1.12× its value at 100 (90 µs vs 80 µs): target ≤1.2× met.",
		"nftables throughput through the ClusterIP: at worst 0.95× pod-to-pod direct",
		"iptables first-packet p50: 80 µs at 100 services, 800 µs at 10000 (10.00×, +73 µs per 1,000 services): its linear growth",
		"iptables throughput through the ClusterIP: at worst 0.80× pod-to-pod direct (8.00 Gbit/s vs 10.00 Gbit/s at 10000 services): target ≥0.9× missed.",
		"ipvs: not measured: kernel lacks ip_vs",
	} {
		if !strings.Contains(notes, want) {
			t.Errorf("notes lack %q:\n%s", want, notes)
		}
	}
	if len(rep.Rows) != 5 || rep.Rows[4][2] != "unavailable" {
		t.Errorf("rows %v", rep.Rows)
	}
	c := rep.Chart
	if len(c.Labels) != 2 || len(c.Series) != 2 || c.Series[1].Name != "iptables" || c.Series[1].Values[1] != 800 {
		t.Errorf("chart %+v", c)
	}
	missed := DatapathReport([]DatapathRun{run("nftables", 100, 80e-6, 1, 1), run("nftables", 10000, 200e-6, 1, 1)}, DatapathOptions{})
	if !strings.Contains(strings.Join(missed.Notes, "\n"), "2.50× its value at 100 (200 µs vs 80 µs): target ≤1.2× missed") {
		t.Errorf("growth beyond the target not reported missed: %v", missed.Notes)
	}
}
