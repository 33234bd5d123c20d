package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"github.com/kdive/kdive/internal/xtables"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/ktest"
	"github.com/kdive/kdive/internal/testbin"
)

// workerEnv makes this test binary a sync worker (TestMain): RunSync's
// children in these tests are the test binary itself.
const workerEnv = "KDIVE_BENCH_SYNC_WORKER"

func TestMain(m *testing.M) {
	if os.Getenv(workerEnv) == "1" {
		if err := ServeSyncWorker(context.Background(), os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(testbin.Main(m))
}

// testWorker is RunSync's Worker for tests: this binary, as a worker.
func testWorker(t *testing.T) []string {
	t.Setenv(workerEnv, "1")
	return []string{os.Args[0]}
}

// requireNoNetNS fails the test when namespaces of the bench are left that
// were not there before (before is kernel.ListNetNS at the start).
func requireNoNetNS(t *testing.T, before []string) {
	t.Helper()
	after, err := kernel.ListNetNS(SyncNetNSPrefix)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range after {
		if !slices.Contains(before, n) {
			t.Errorf("namespace %s left behind", n)
		}
	}
}

func listSyncNetNS(t *testing.T) []string {
	t.Helper()
	ns, err := kernel.ListNetNS(SyncNetNSPrefix)
	if err != nil {
		t.Fatal(err)
	}
	return ns
}

// checkRun checks a run's fields: every time measured, rules and peak RSS
// counted; elements where the mode has sets.
func checkRun(t *testing.T, run SyncRun, services, endpoints int) {
	t.Helper()
	what := fmt.Sprintf("%s %d×%d", run.Label(), run.Services, run.Endpoints)
	if run.Services != services || run.Endpoints != endpoints {
		t.Errorf("%s: want size %d×%d", what, services, endpoints)
	}
	for name, v := range map[string]float64{
		"firstSyncSeconds": run.FirstSyncSeconds, "endpointChangeSeconds": run.EndpointChangeSeconds,
		"serviceAddSeconds": run.ServiceAddSeconds, "noopSyncSeconds": run.NoopSyncSeconds,
		"fullResyncSeconds": run.FullResyncSeconds, "floorSeconds": run.FloorSeconds,
	} {
		if !(v > 0) {
			t.Errorf("%s: %s = %v, want > 0", what, name, v)
		}
	}
	if run.Rules <= 0 || run.PeakRSSBytes <= 0 || run.ProcessRSSBytes <= 0 || run.PeakRSSBytes < run.ProcessRSSBytes {
		t.Errorf("%s: rules %d, peak RSS %d, process RSS %d; want > 0 and peak ≥ process", what, run.Rules, run.PeakRSSBytes, run.ProcessRSSBytes)
	}
	if run.FloorTool == "" || run.FloorNote != "" {
		t.Errorf("%s: floor tool %q, note %q", what, run.FloorTool, run.FloorNote)
	}
	switch run.Mode {
	case ModeNftables:
		// One element per service in the service map, and one per
		// endpoint in some set or map.
		if run.Elements < services*endpoints {
			t.Errorf("%s: elements %d, want at least %d", what, run.Elements, services*endpoints)
		}
	case ModeIPTables:
		// A KUBE-SEP chain with at least a DNAT per endpoint.
		if run.Rules < services*endpoints {
			t.Errorf("%s: rules %d, want at least %d", what, run.Rules, services*endpoints)
		}
	case ModeIPVS:
		if run.VirtualServers != services || run.RealServers != services*endpoints || run.Elements < services {
			t.Errorf("%s: %d virtual servers, %d real servers, %d set entries; want %d, %d, ≥ %d", what,
				run.VirtualServers, run.RealServers, run.Elements, services, services*endpoints, services)
		}
	}
}

// TestSyncNftablesIptables runs both native modes at a small size through
// the Go API.
func TestSyncNftablesIptables(t *testing.T) {
	ktest.RequireFeature(t, kernel.FeatureNFTables)
	before := listSyncNetNS(t)
	const services, endpoints = 200, 3
	r, err := RunSync(context.Background(), SyncOptions{
		Modes: []string{ModeNftables, ModeIPTables}, Services: []int{services}, Endpoints: endpoints, Worker: testWorker(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	requireNoNetNS(t, before)
	logReport(t, r)
	var labels []string
	for _, run := range r.Runs {
		run := run.(SyncRun)
		labels = append(labels, run.Label())
		checkRun(t, run, services, endpoints)
	}
	// iptables runs in every flavour installed here.
	want := []string{"nftables"}
	for _, f := range []string{"nft", "legacy"} {
		if xtables.Flavour(f).Tool().Installed() == nil {
			want = append(want, "iptables ("+f+")")
		}
	}
	if !slices.Equal(labels, want) {
		t.Errorf("runs %q, want %q", labels, want)
	}
	if len(r.Rows) != len(r.Runs) || len(r.Chart.Labels) != len(r.Runs) {
		t.Errorf("%d rows and %d chart labels for %d runs", len(r.Rows), len(r.Chart.Labels), len(r.Runs))
	}
}

func logReport(t *testing.T, r *Report) {
	t.Helper()
	var b bytes.Buffer
	if err := r.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + b.String())
}

// TestSyncCleansUpAfterFailure: a worker that fails leaves no namespace
// and its error is returned with the report.
func TestSyncCleansUpAfterFailure(t *testing.T) {
	ktest.RequireFeature(t, kernel.FeatureNFTables)
	before := listSyncNetNS(t)
	r, err := RunSync(context.Background(), SyncOptions{
		Modes: []string{ModeNftables}, Services: []int{10}, Endpoints: 2, Worker: []string{"sh", "-c", "echo broken >&2; exit 3"},
	})
	if err == nil || !strings.Contains(err.Error(), "broken") {
		t.Errorf("RunSync with a failing worker: err = %v, want the worker's stderr", err)
	}
	if r == nil || len(r.Runs) != 0 || !slices.ContainsFunc(r.Notes, func(n string) bool { return strings.Contains(n, "failed") }) {
		t.Errorf("report %+v: want no runs and a note saying the run failed", r)
	}
	requireNoNetNS(t, before)
}

// TestSyncCLIJSON runs `kdive bench sync -o json` and checks every field
// of every object.
func TestSyncCLIJSON(t *testing.T) {
	ktest.RequireFeature(t, kernel.FeatureNFTables)
	before := listSyncNetNS(t)
	const services, endpoints = 100, 2
	cmd := exec.Command(testbin.Path(t, testbin.Kdive), "bench", "sync", "--mode", "nftables,iptables",
		"--services", fmt.Sprint(services), "--endpoints", fmt.Sprint(endpoints), "-o", "json")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kdive bench sync: %v\n%s", err, stderr.String())
	}
	requireNoNetNS(t, before)
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) < 2 {
		t.Fatalf("want a JSON object per run (nftables and iptables), got:\n%s", out)
	}
	required := []string{"mode", "services", "endpoints", "firstSyncSeconds", "endpointChangeSeconds", "serviceAddSeconds",
		"noopSyncSeconds", "fullResyncSeconds", "floorSeconds", "floorTool", "peakRSSBytes", "processRSSBytes", "rules", "elements"}
	modes := map[string]bool{}
	for _, l := range lines {
		var fields map[string]any
		if err := json.Unmarshal([]byte(l), &fields); err != nil {
			t.Fatalf("line %q: %v", l, err)
		}
		for _, k := range required {
			if _, ok := fields[k]; !ok {
				t.Errorf("line %q: no %q", l, k)
			}
		}
		var run SyncRun
		if err := json.Unmarshal([]byte(l), &run); err != nil {
			t.Fatal(err)
		}
		if run.Mode == ModeIPTables && fields["flavour"] == nil {
			t.Errorf("line %q: iptables run without flavour", l)
		}
		modes[run.Mode] = true
		checkRun(t, run, services, endpoints)
	}
	if !modes[ModeNftables] || !modes[ModeIPTables] {
		t.Errorf("modes %v, want nftables and iptables", modes)
	}
}

// TestSyncIPVS runs the IPVS mode (in the test VM: the development
// kernel has no ip_vs).
func TestSyncIPVS(t *testing.T) {
	ktest.RequireFeature(t, kernel.FeatureIPVS)
	before := listSyncNetNS(t)
	const services, endpoints = 50, 2
	r, err := RunSync(context.Background(), SyncOptions{
		Modes: []string{ModeIPVS}, Services: []int{services}, Endpoints: endpoints, Worker: testWorker(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	requireNoNetNS(t, before)
	logReport(t, r)
	if len(r.Runs) != 1 {
		t.Fatalf("runs %v, want one", r.Runs)
	}
	checkRun(t, r.Runs[0].(SyncRun), services, endpoints)
	if ft := r.Runs[0].(SyncRun).FloorTool; !strings.Contains(ft, "ipvsadm -R") || !strings.Contains(ft, "ip -batch") {
		t.Errorf("IPVS floor tools %q, want ipvsadm -R and ip -batch among them", ft)
	}
}

// TestSyncReportTargets: the notes say met or missed with the numbers,
// and upstream's numbers appear where the sizes match.
func TestSyncReportTargets(t *testing.T) {
	good := SyncRun{Mode: ModeNftables, Services: 10000, Endpoints: 10, FirstSyncSeconds: 1.2, FloorSeconds: 1.0,
		EndpointChangeSeconds: 0.004, PeakRSSBytes: 100 * mib, ProcessRSSBytes: 90 * mib, FloorTool: "nft -f"}
	slow := SyncRun{Mode: ModeNftables, Services: 50000, Endpoints: 10, FirstSyncSeconds: 9, FloorSeconds: 3,
		EndpointChangeSeconds: 0.08, PeakRSSBytes: 400 * mib}
	legacy := SyncRun{Mode: ModeIPTables, Flavour: "legacy", Services: 10000, Endpoints: 10, FirstSyncSeconds: 3,
		FloorSeconds: 4, EndpointChangeSeconds: 0.1, PeakRSSBytes: 80 * mib}
	r := syncReport([]SyncRun{good, slow, legacy}, []string{"ipvs: skipped"})
	notes := strings.Join(r.Notes, "\n")
	for _, want := range []string{
		"target nftables 10000×10 first sync < 2.00 s: met (1.20 s)",
		"first sync ≤ 1.5× floor: met (1.20 s against 1.00 s, 1.20×)",
		"one-endpoint change < 20.0 ms: met (4.0 ms)",
		"peak RSS < 150 MiB: met (100 MiB; the Go process alone 90 MiB)",
		"target nftables 50000×10 completes with a one-endpoint change < 50.0 ms: MISSED (80.0 ms",
		"upstream kube-proxy v1.37.2 nftables 10000×10: first sync 47.00 s, one-endpoint change 350.0 ms, 320 MiB; kdive: first sync 1.20 s, one-endpoint change 4.0 ms, 100 MiB",
		"upstream kube-proxy v1.37.2 iptables (legacy) 10000×10: first sync 10.60 s, one-endpoint change 2.00 s; kdive: first sync 3.00 s",
		"first sync beat the floor in iptables (legacy) 10000×10 (0.75×)",
		"ipvs: skipped",
	} {
		if !strings.Contains(notes, want) {
			t.Errorf("notes lack %q:\n%s", want, notes)
		}
	}
	if strings.Contains(notes, "5000×10") {
		t.Errorf("anchor for a size that did not run:\n%s", notes)
	}
	if got := r.Rows[0][6]; got != "1.20×" {
		t.Errorf("first/floor cell %q, want 1.20×", got)
	}
	if len(r.Chart.Series) != 2 || len(r.Chart.Labels) != 3 {
		t.Errorf("chart %+v: want first sync and floor for 3 runs", r.Chart)
	}

	var b bytes.Buffer
	if err := r.WriteJSON(&b); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(b.String(), "\n"); n != 3 {
		t.Errorf("-o json printed %d lines, want one per run:\n%s", n, b.String())
	}
}
