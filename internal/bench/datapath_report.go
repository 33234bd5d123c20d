package bench

import (
	"fmt"
	"math"
	"slices"
	"strconv"
)

// Targets of the datapath benchmark.
const (
	// FirstPacketGrowthTarget: nftables and IPVS look services up in a
	// hash (verdict map, IPVS table), so the first-packet p50 at the
	// largest count stays within this factor of the smallest.
	FirstPacketGrowthTarget = 1.2
	// ThroughputTarget: a stream through a ClusterIP keeps at least this
	// share of pod-to-pod direct (only the first packet meets the proxy;
	// the rest follow conntrack).
	ThroughputTarget = 0.9
)

// DatapathReport makes the report of RunDatapath's runs.
func DatapathReport(runs []DatapathRun, opts DatapathOptions) *Report {
	_ = opts.defaults()
	r := &Report{
		Title: "kdive bench datapath: first-packet latency and throughput through a ClusterIP",
		Header: []string{"mode", "services", "first packet p50", "p90", "p99", "samples",
			"via ClusterIP", "pod→pod direct", "ratio"},
	}
	for _, run := range runs {
		r.Runs = append(r.Runs, run)
		if run.Unavailable != "" {
			r.Rows = append(r.Rows, []string{run.Mode, "-", "unavailable", "-", "-", "-", "-", "-", "-"})
			r.Notes = append(r.Notes, fmt.Sprintf("%s: not measured: %s; the test VM runs it (go test -run IPVS ./internal/bench/ with -exec hack/vmexec).", run.Mode, run.Unavailable))
			continue
		}
		r.Rows = append(r.Rows, []string{run.Mode, strconv.Itoa(run.Services),
			Seconds(run.P50Seconds), Seconds(run.P90Seconds), Seconds(run.P99Seconds), strconv.Itoa(run.Samples),
			BitRate(run.ThroughputBitsPerSecond), BitRate(run.DirectBitsPerSecond),
			Ratio(run.ThroughputBitsPerSecond, run.DirectBitsPerSecond)})
	}
	for _, mode := range ProxyModes {
		ms := measured(runs, mode)
		if len(ms) == 0 {
			continue
		}
		r.Notes = append(r.Notes, growthNote(mode, ms), throughputNote(mode, ms))
	}
	r.Notes = append(r.Notes, fmt.Sprintf("Method: a client pod and a server pod routed on one node (kdive-cni's routed wiring, podnet on the node, "+
		"the proxy backend programmed directly); first packet = new TCP connection + one %d-byte request/response to the ClusterIP "+
		"(the measured service sorts last of N), up to %d per count within %s; throughput = one TCP stream for %s to each, in halves ordered ClusterIP, direct, direct, ClusterIP.",
		msgSize, opts.Samples, opts.SampleTime, opts.Duration))
	r.Chart = datapathChart(runs)
	return r
}

// measured are a mode's runs with numbers, by service count.
func measured(runs []DatapathRun, mode string) []DatapathRun {
	var out []DatapathRun
	for _, r := range runs {
		if r.Mode == mode && r.Unavailable == "" {
			out = append(out, r)
		}
	}
	slices.SortFunc(out, func(a, b DatapathRun) int { return a.Services - b.Services })
	return out
}

// growthNote compares the first-packet p50 at the largest count with the
// smallest: a target for nftables and IPVS, iptables' linear growth shown.
func growthNote(mode string, ms []DatapathRun) string {
	lo, hi := ms[0], ms[len(ms)-1]
	if lo.Services == hi.Services {
		return fmt.Sprintf("%s first-packet growth: not checked (one service count; give two, e.g. --services 100,10000).", mode)
	}
	g := hi.P50Seconds / lo.P50Seconds
	if mode == "iptables" {
		slope := (hi.P50Seconds - lo.P50Seconds) / float64(hi.Services-lo.Services) * 1000
		what := "its linear growth: the packet walks KUBE-SERVICES rule by rule"
		if g < FirstPacketGrowthTarget {
			what = "no clear growth at these counts"
		}
		return fmt.Sprintf("iptables first-packet p50: %s at %d services, %s at %d (%.2f×, %s per 1,000 services): %s.",
			Seconds(lo.P50Seconds), lo.Services, Seconds(hi.P50Seconds), hi.Services, g, signedSeconds(slope), what)
	}
	verdict := "met"
	if g > FirstPacketGrowthTarget {
		verdict = "missed"
	}
	return fmt.Sprintf("%s first-packet p50 at %d services is %.2f× its value at %d (%s vs %s): target ≤%.1f× %s.",
		mode, hi.Services, g, lo.Services, Seconds(hi.P50Seconds), Seconds(lo.P50Seconds), FirstPacketGrowthTarget, verdict)
}

func signedSeconds(s float64) string {
	if s < 0 {
		return "-" + Seconds(-s)
	}
	return "+" + Seconds(s)
}

// throughputNote gives the worst ClusterIP/direct ratio of a mode.
func throughputNote(mode string, ms []DatapathRun) string {
	worst := ms[0]
	for _, m := range ms {
		if m.ThroughputRatio < worst.ThroughputRatio {
			worst = m
		}
	}
	verdict := "met"
	if worst.ThroughputRatio < ThroughputTarget {
		verdict = "missed"
	}
	return fmt.Sprintf("%s throughput through the ClusterIP: at worst %.2f× pod-to-pod direct (%s vs %s at %d services): target ≥%.1f× %s.",
		mode, worst.ThroughputRatio, BitRate(worst.ThroughputBitsPerSecond), BitRate(worst.DirectBitsPerSecond),
		worst.Services, ThroughputTarget, verdict)
}

// datapathChart is the first-packet p50 per service count, one bar per
// mode.
func datapathChart(runs []DatapathRun) *Chart {
	c := &Chart{Title: "First-packet latency p50 to a ClusterIP (new connection + request/response)", Unit: "microseconds"}
	var sizes []int
	for _, r := range runs {
		if r.Unavailable == "" && !slices.Contains(sizes, r.Services) {
			sizes = append(sizes, r.Services)
		}
	}
	slices.Sort(sizes)
	for _, n := range sizes {
		c.Labels = append(c.Labels, fmt.Sprintf("%d services", n))
	}
	for _, mode := range ProxyModes {
		ms := measured(runs, mode)
		if len(ms) == 0 {
			continue
		}
		s := Series{Name: mode, Values: make([]float64, len(sizes))}
		for i, n := range sizes {
			s.Values[i] = math.NaN()
			for _, m := range ms {
				if m.Services == n {
					s.Values[i] = m.P50Seconds * 1e6
				}
			}
		}
		c.Series = append(c.Series, s)
	}
	return c
}
