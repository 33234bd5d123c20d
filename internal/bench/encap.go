package bench

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/model"
)

// EncapModes are the modes `kdive bench encap` knows, in report order.
var EncapModes = []string{string(model.EncapNone), string(model.EncapIPIP), string(model.EncapVXLAN)}

// BareVeth is the baseline's mode name in the report.
const BareVeth = "bare veth"

// EncapOptions say what `kdive bench encap` measures. Zero values take the
// defaults.
type EncapOptions struct {
	Modes []string // default EncapModes
	// Duration of each throughput stream (default 2 s).
	Duration time.Duration
	// Samples request/response round trips on one connection (default
	// 2000), within SampleTime (default 5 s).
	Samples    int
	SampleTime time.Duration
	// OnNamespace and Progress as in DatapathOptions.
	OnNamespace func(name string)
	Progress    func(string)
}

func (o *EncapOptions) defaults() error {
	if len(o.Modes) == 0 {
		o.Modes = EncapModes
	}
	for _, m := range o.Modes {
		if !slices.Contains(EncapModes, m) {
			return fmt.Errorf("encap mode %q: want one of %s", m, strings.Join(EncapModes, ", "))
		}
	}
	o.Duration = cmpOr(o.Duration, 2*time.Second)
	o.Samples = cmpOr(o.Samples, 2000)
	o.SampleTime = cmpOr(o.SampleTime, 5*time.Second)
	return nil
}

// EncapRun is one mode (or the bare-veth baseline) pod to pod across two
// nodes (-o json prints one per line). A mode the kernel cannot run has
// only Mode and Unavailable.
type EncapRun struct {
	Mode   string `json:"mode"`
	PodMTU int    `json:"podMTU,omitempty"`
	// One TCP stream from pod-1 to pod-2.
	ThroughputBitsPerSecond float64 `json:"throughputBitsPerSecond,omitempty"`
	// Round trips of a 64-byte request and response on one connection.
	P50Seconds float64 `json:"p50Seconds,omitempty"`
	P99Seconds float64 `json:"p99Seconds,omitempty"`
	Samples    int     `json:"samples,omitempty"`
	// Against the bare veth: throughput over its throughput, p50 over its
	// p50.
	ThroughputRatio float64 `json:"throughputRatio,omitempty"`
	P50Ratio        float64 `json:"p50Ratio,omitempty"`
	// ServerConnections is how many connections the server pod accepted.
	ServerConnections int64  `json:"serverConnections,omitempty"`
	Unavailable       string `json:"unavailable,omitempty"`
}

// RunEncap measures the bare veth, then every mode, each in a topology of
// its own (see topo_encap.go) that is removed afterwards.
func RunEncap(ctx context.Context, opts EncapOptions) ([]EncapRun, error) {
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	progress(opts.Progress, "%s", BareVeth)
	base, err := runEncapMode(ctx, BareVeth, opts)
	if err != nil {
		return nil, fmt.Errorf("bench encap baseline (%s): %w", BareVeth, err)
	}
	base.ThroughputRatio, base.P50Ratio = 1, 1
	runs := []EncapRun{base}
	for _, mode := range opts.Modes {
		if why := encapUnavailable(mode); why != "" {
			runs = append(runs, EncapRun{Mode: mode, Unavailable: why})
			continue
		}
		progress(opts.Progress, "encap %s", mode)
		r, err := runEncapMode(ctx, mode, opts)
		if err != nil {
			return nil, fmt.Errorf("bench encap %s: %w", mode, err)
		}
		r.ThroughputRatio = r.ThroughputBitsPerSecond / base.ThroughputBitsPerSecond
		r.P50Ratio = r.P50Seconds / base.P50Seconds
		runs = append(runs, r)
	}
	return runs, nil
}

func encapUnavailable(mode string) string {
	f := map[string]kernel.Feature{"ipip": kernel.FeatureIPIP, "vxlan": kernel.FeatureVXLAN}[mode]
	if f == "" {
		return ""
	}
	if err := kernel.Probe(f); err != nil {
		return fmt.Sprintf("kernel lacks %s (%v)", f, err)
	}
	return ""
}

func runEncapMode(ctx context.Context, mode string, opts EncapOptions) (_ EncapRun, err error) {
	var t *encapTopo
	if mode == BareVeth {
		t, err = newBareTopo(opts.OnNamespace)
	} else {
		t, err = newEncapTopo(ctx, model.Encap(mode), opts.OnNamespace)
	}
	if err != nil {
		return EncapRun{}, err
	}
	defer func() { err = errors.Join(err, t.Close()) }()
	// Warm up (neighbours, routes) with a few round trips.
	if _, err := roundTrips(ctx, t.client, t.addr, 10, opts.SampleTime); err != nil {
		return EncapRun{}, err
	}
	ds, err := roundTrips(ctx, t.client, t.addr, opts.Samples, opts.SampleTime)
	if err != nil {
		return EncapRun{}, err
	}
	bps, err := throughput(ctx, t.client, t.addr, opts.Duration)
	if err != nil {
		return EncapRun{}, err
	}
	l := summarize(ds)
	return EncapRun{Mode: mode, PodMTU: t.podMTU, ThroughputBitsPerSecond: bps,
		P50Seconds: l.P50, P99Seconds: l.P99, Samples: l.Samples,
		ServerConnections: t.srv.echoes.Load() + t.srv.sinks.Load()}, nil
}

// EncapReport makes the report of RunEncap's runs.
func EncapReport(runs []EncapRun, opts EncapOptions) *Report {
	_ = opts.defaults()
	r := &Report{
		Title:  "kdive bench encap: pod to pod across two nodes, per encapsulation (policy always)",
		Header: []string{"mode", "pod MTU", "throughput", "vs bare veth", "RR p50", "RR p99", "p50 vs bare veth", "samples"},
		Chart:  &Chart{Title: "Pod-to-pod TCP throughput across two nodes", Unit: "Gbit/s"},
	}
	tput := Series{Name: "throughput"}
	for _, run := range runs {
		r.Runs = append(r.Runs, run)
		r.Chart.Labels = append(r.Chart.Labels, run.Mode)
		if run.Unavailable != "" {
			r.Rows = append(r.Rows, []string{run.Mode, "-", "unavailable", "-", "-", "-", "-", "-"})
			r.Notes = append(r.Notes, fmt.Sprintf("%s: not measured: %s; the test VM runs it (go test -run IPIP ./internal/bench/ with -exec hack/vmexec).", run.Mode, run.Unavailable))
			tput.Values = append(tput.Values, math.NaN())
			continue
		}
		r.Rows = append(r.Rows, []string{run.Mode, strconv.Itoa(run.PodMTU),
			BitRate(run.ThroughputBitsPerSecond), fmt.Sprintf("%.2f×", run.ThroughputRatio),
			Seconds(run.P50Seconds), Seconds(run.P99Seconds), fmt.Sprintf("%.2f×", run.P50Ratio), strconv.Itoa(run.Samples)})
		tput.Values = append(tput.Values, run.ThroughputBitsPerSecond/1e9)
	}
	r.Chart.Series = []Series{tput}
	r.Notes = append(r.Notes, fmt.Sprintf("Method: two node namespaces on one L2 segment (a veth pair), one routed pod each, podnet programming both nodes; "+
		"the baseline is a bare veth between two namespaces. Throughput = one TCP stream for %s; RR = %d-byte request/response "+
		"round trips on one connection, up to %d within %s.", opts.Duration, msgSize, opts.Samples, opts.SampleTime))
	return r
}
