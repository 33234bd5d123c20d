package bench

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/ktest"
)

// namespaces records the names a run creates and checks that none of them
// is left afterwards. (Other runs, e.g. `kdive bench sync`, may have
// kdive-bench- namespaces of their own at the same time.)
type namespaces struct {
	mu    sync.Mutex
	names []string
}

func (n *namespaces) add(name string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.names = append(n.names, name)
}

func (n *namespaces) checkGone(t *testing.T) {
	t.Helper()
	if len(n.names) == 0 {
		t.Fatal("the run reported no namespace")
	}
	left, err := kernel.ListNetNS(NSPrefix)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range n.names {
		if !strings.HasPrefix(name, NSPrefix) {
			t.Errorf("namespace %q does not start with %s", name, NSPrefix)
		}
		if slices.Contains(left, name) {
			t.Errorf("namespace %s was left behind", name)
		}
	}
}

func checkDatapathRun(t *testing.T, r DatapathRun, samples int) {
	t.Helper()
	if r.Unavailable != "" {
		t.Fatalf("%s at %d: unavailable: %s", r.Mode, r.Services, r.Unavailable)
	}
	if !(r.P50Seconds > 0 && r.P90Seconds >= r.P50Seconds && r.P99Seconds >= r.P90Seconds) {
		t.Errorf("%s at %d: latencies p50 %g p90 %g p99 %g", r.Mode, r.Services, r.P50Seconds, r.P90Seconds, r.P99Seconds)
	}
	if r.Samples != samples {
		t.Errorf("%s at %d: %d samples, want %d", r.Mode, r.Services, r.Samples, samples)
	}
	if !(r.ThroughputBitsPerSecond > 0 && r.DirectBitsPerSecond > 0) {
		t.Errorf("%s at %d: throughput %g via ClusterIP, %g direct", r.Mode, r.Services, r.ThroughputBitsPerSecond, r.DirectBitsPerSecond)
	}
	if want := r.ThroughputBitsPerSecond / r.DirectBitsPerSecond; math.Abs(r.ThroughputRatio-want) > 1e-9 || !(want > 0) {
		t.Errorf("%s at %d: ratio %g, want %g", r.Mode, r.Services, r.ThroughputRatio, want)
	}
	// Every timed connection and the warm-up went to the ClusterIP only,
	// and the server pod answered each of them.
	if r.ServedViaClusterIP < int64(samples+10) {
		t.Errorf("%s at %d: the server pod answered %d connections through the ClusterIP, want %d", r.Mode, r.Services, r.ServedViaClusterIP, samples+10)
	}
}

func TestDatapathNFTablesAndIPTables(t *testing.T) {
	ktest.RequireFeature(t, kernel.FeatureVeth)
	ktest.RequireFeature(t, kernel.FeatureNFTables)
	var made namespaces
	opts := DatapathOptions{Modes: []string{"nftables", "iptables"}, Services: []int{10, 100},
		Samples: 50, SampleTime: 20 * time.Second, Duration: 200 * time.Millisecond, OnNamespace: made.add}
	runs, err := RunDatapath(t.Context(), opts)
	made.checkGone(t)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range runs {
		got = append(got, r.Mode+"/"+strconv.Itoa(r.Services))
		checkDatapathRun(t, r, 50)
	}
	if want := []string{"nftables/10", "nftables/100", "iptables/10", "iptables/100"}; !slices.Equal(got, want) {
		t.Fatalf("runs %v, want %v", got, want)
	}
	rep := DatapathReport(runs, opts)
	if len(rep.Rows) != 4 || len(rep.Runs) != 4 {
		t.Errorf("report has %d rows and %d runs, want 4", len(rep.Rows), len(rep.Runs))
	}
	var js strings.Builder
	if err := rep.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(js.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("JSON line %q: %v", line, err)
		}
		for _, k := range []string{"mode", "services", "p50Seconds", "p90Seconds", "p99Seconds", "samples",
			"throughputBitsPerSecond", "directBitsPerSecond", "throughputRatio", "servedViaClusterIP"} {
			if _, ok := m[k]; !ok {
				t.Errorf("JSON line %s lacks %s", line, k)
			}
		}
	}
}

// TestDatapathCleansUpOnError cancels a run while it builds its topology:
// it must fail, saying why, and leave no namespace behind.
func TestDatapathCleansUpOnError(t *testing.T) {
	ktest.RequireFeature(t, kernel.FeatureVeth)
	ctx, cancel := context.WithCancel(t.Context())
	var made namespaces
	opts := DatapathOptions{Modes: []string{"nftables"}, Services: []int{10}, Samples: 5,
		OnNamespace: func(name string) { made.add(name); cancel() }}
	_, err := RunDatapath(ctx, opts)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled run: %v, want context.Canceled", err)
	}
	made.checkGone(t)
}

// TestDatapathIPVS is the VM's: IPVS needs ip_vs and dummy.
func TestDatapathIPVS(t *testing.T) {
	ktest.RequireFeature(t, kernel.FeatureIPVS)
	ktest.RequireFeature(t, kernel.FeatureDummy)
	var made namespaces
	opts := DatapathOptions{Modes: []string{"ipvs"}, Services: []int{10, 100},
		Samples: 30, SampleTime: 60 * time.Second, Duration: 400 * time.Millisecond, OnNamespace: made.add}
	runs, err := RunDatapath(t.Context(), opts)
	made.checkGone(t)
	if err != nil {
		t.Fatal(err)
	}
	if len(runs) != 2 {
		t.Fatalf("%d runs, want 2: %+v", len(runs), runs)
	}
	for _, r := range runs {
		checkDatapathRun(t, r, 30)
	}
	var md strings.Builder
	if err := DatapathReport(runs, opts).WriteMarkdown(&md); err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", md.String())
}

func TestDatapathOptionsRejected(t *testing.T) {
	for _, o := range []DatapathOptions{
		{Modes: []string{"userspace"}},
		{Services: []int{0}},
		{Services: []int{MaxServices + 1}},
	} {
		if _, err := RunDatapath(t.Context(), o); err == nil {
			t.Errorf("RunDatapath(%+v) accepted", o)
		}
	}
}
