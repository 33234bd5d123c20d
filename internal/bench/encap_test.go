package bench

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/ktest"
)

func checkEncapRuns(t *testing.T, runs []EncapRun, modes []string, mtus map[string]int) {
	t.Helper()
	want := append([]string{BareVeth}, modes...)
	if len(runs) != len(want) {
		t.Fatalf("%d runs, want %v: %+v", len(runs), want, runs)
	}
	base := runs[0]
	for i, r := range runs {
		if r.Mode != want[i] {
			t.Errorf("run %d is %q, want %q", i, r.Mode, want[i])
		}
		if r.Unavailable != "" {
			t.Errorf("%s: unavailable: %s", r.Mode, r.Unavailable)
			continue
		}
		if !(r.ThroughputBitsPerSecond > 0 && r.P50Seconds > 0 && r.P99Seconds >= r.P50Seconds && r.Samples > 0) {
			t.Errorf("%s: throughput %g, p50 %g, p99 %g, %d samples", r.Mode, r.ThroughputBitsPerSecond, r.P50Seconds, r.P99Seconds, r.Samples)
		}
		tr, lr := r.ThroughputBitsPerSecond/base.ThroughputBitsPerSecond, r.P50Seconds/base.P50Seconds
		if math.Abs(r.ThroughputRatio-tr) > 1e-9 || math.Abs(r.P50Ratio-lr) > 1e-9 || !(tr > 0) {
			t.Errorf("%s: ratios %g, %g; want %g, %g", r.Mode, r.ThroughputRatio, r.P50Ratio, tr, lr)
		}
		if r.PodMTU != mtus[r.Mode] {
			t.Errorf("%s: pod MTU %d, want %d", r.Mode, r.PodMTU, mtus[r.Mode])
		}
		// The warm-up, the round trips and the stream: the pod on the
		// other node answered all three connections.
		if r.ServerConnections != 3 {
			t.Errorf("%s: the server pod accepted %d connections, want 3", r.Mode, r.ServerConnections)
		}
	}
}

func TestEncapNoneAndVXLAN(t *testing.T) {
	ktest.RequireFeature(t, kernel.FeatureVeth)
	ktest.RequireFeature(t, kernel.FeatureVXLAN)
	var made namespaces
	opts := EncapOptions{Modes: []string{"none", "vxlan"}, Duration: 300 * time.Millisecond,
		Samples: 200, SampleTime: 10 * time.Second, OnNamespace: made.add}
	runs, err := RunEncap(t.Context(), opts)
	made.checkGone(t)
	if err != nil {
		t.Fatal(err)
	}
	checkEncapRuns(t, runs, opts.Modes, map[string]int{BareVeth: 1500, "none": 1500, "vxlan": 1450})
	rep := EncapReport(runs, opts)
	if len(rep.Rows) != 3 || len(rep.Chart.Series) != 1 || len(rep.Chart.Series[0].Values) != 3 {
		t.Errorf("report: %d rows, chart %+v", len(rep.Rows), rep.Chart)
	}
}

// TestEncapMissingModule runs natively where the kernel lacks ipip: the
// mode gets a row saying so instead of failing the run.
func TestEncapMissingModule(t *testing.T) {
	ktest.RequireFeature(t, kernel.FeatureVeth)
	if kernel.Probe(kernel.FeatureIPIP) == nil {
		t.Skip("this kernel has ipip")
	}
	var made namespaces
	runs, err := RunEncap(t.Context(), EncapOptions{Modes: []string{"ipip"}, Duration: 100 * time.Millisecond,
		Samples: 20, OnNamespace: made.add})
	made.checkGone(t)
	if err != nil {
		t.Fatal(err)
	}
	if len(runs) != 2 || runs[1].Mode != "ipip" || runs[1].Unavailable == "" || runs[1].ThroughputBitsPerSecond != 0 {
		t.Fatalf("runs %+v, want the baseline and ipip unavailable", runs)
	}
	rep := EncapReport(runs, EncapOptions{})
	if rep.Rows[1][2] != "unavailable" || len(rep.Notes) < 2 {
		t.Errorf("report rows %v notes %v", rep.Rows, rep.Notes)
	}
}

// TestEncapIPIP is the VM's: IPIP needs the ipip module.
func TestEncapIPIP(t *testing.T) {
	ktest.RequireFeature(t, kernel.FeatureIPIP)
	var made namespaces
	opts := EncapOptions{Modes: []string{"ipip"}, Duration: 400 * time.Millisecond,
		Samples: 100, SampleTime: 30 * time.Second, OnNamespace: made.add}
	runs, err := RunEncap(t.Context(), opts)
	made.checkGone(t)
	if err != nil {
		t.Fatal(err)
	}
	checkEncapRuns(t, runs, opts.Modes, map[string]int{BareVeth: 1500, "ipip": 1480})
	var md strings.Builder
	if err := EncapReport(runs, opts).WriteMarkdown(&md); err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", md.String())
}
