package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/ktest"
	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/source/labstore"
)

// Atomicity: a sync that fails half way leaves what the previous one
// programmed in the kernel untouched, is retried with backoff, is reported
// in the log, in kdive_sync_errors_total and (once a change has waited two
// sync periods) in /healthz, and the agent converges by itself once the
// cause is gone. Each test injects one real fault into an agent running
// in-process on a node namespace (address plan as in agent_test.go;
// services from 10.96.0.0/16, endpoints on n2):
//
//   - TestAtomicityNFTMissing: the nft binary disappears from PATH;
//   - TestAtomicityNFTKernelRejects: someone else's element squats on the
//     key of a new service in the agent's map: the kernel refuses (EEXIST)
//     the transaction that adds it;
//   - TestAtomicityIPTablesChainInUse: someone else's rule jumps to a
//     service's chain: the kernel refuses (EBUSY) to delete the chain when
//     the service goes; the retry keeps that chain until the rule goes;
//   - TestAtomicityPodNetUplinkDown: the uplink is down when a peer
//     appears: netlink refuses its route.

// realNft is the nft binary, found before any test changes PATH (empty
// when there is none).
var realNft, _ = exec.LookPath("nft")

// logBuffer records the agent's slog output. hook, when set, runs inside
// the agent's logging call, so it sees the kernel before the agent goes on
// (a retry cannot start while it runs).
type logBuffer struct {
	mu   sync.Mutex
	recs []logRecord
	hook func(logRecord)
}

type logRecord struct {
	At    time.Time
	Level slog.Level
	Msg   string
	Attrs map[string]string
}

func (r logRecord) String() string {
	keys := slices.Sorted(func(yield func(string) bool) {
		for k := range r.Attrs {
			if !yield(k) {
				return
			}
		}
	})
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s %q", r.At.Format("15:04:05.000"), r.Level, r.Msg)
	for _, k := range keys {
		fmt.Fprintf(&b, " %s=%q", k, r.Attrs[k])
	}
	return b.String()
}

type logHandler struct {
	b     *logBuffer
	attrs []slog.Attr
}

func (h logHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h logHandler) Handle(_ context.Context, r slog.Record) error {
	rec := logRecord{At: r.Time, Level: r.Level, Msg: r.Message, Attrs: map[string]string{}}
	for _, a := range h.attrs {
		rec.Attrs[a.Key] = a.Value.String()
	}
	r.Attrs(func(a slog.Attr) bool { rec.Attrs[a.Key] = a.Value.String(); return true })
	h.b.mu.Lock()
	h.b.recs = append(h.b.recs, rec)
	hook := h.b.hook
	h.b.mu.Unlock()
	if hook != nil {
		hook(rec)
	}
	return nil
}

func (h logHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return logHandler{b: h.b, attrs: append(slices.Clone(h.attrs), as...)}
}

func (h logHandler) WithGroup(string) slog.Handler { return h }

func (b *logBuffer) setHook(f func(logRecord)) {
	b.mu.Lock()
	b.hook = f
	b.mu.Unlock()
}

// since returns the records with message msg logged at or after t.
func (b *logBuffer) since(t time.Time, msg string) []logRecord {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []logRecord
	for _, r := range b.recs {
		if !r.At.Before(t) && (msg == "" || r.Msg == msg) {
			out = append(out, r)
		}
	}
	return out
}

func (b *logBuffer) dump() string {
	var out []string
	for _, r := range b.since(time.Time{}, "") {
		out = append(out, r.String())
	}
	return strings.Join(out, "\n")
}

// agentBed is an agent running in-process on a node namespace n1
// (192.0.2.10/24 on eth0, a veth to a peer namespace) fed by a lab store.
type agentBed struct {
	t     *testing.T
	node  *kernel.NetNS
	store *labstore.Store
	cfg   *Configuration
	logs  *logBuffer
	start time.Time

	nodes    []corev1.Node
	services []corev1.Service
	slices   []discoveryv1.EndpointSlice

	cancel context.CancelFunc
	done   chan error
}

func newAgentBed(t *testing.T, proxyMode string, period time.Duration) *agentBed {
	t.Helper()
	ktest.RequireFeature(t, kernel.FeatureVXLAN)
	switch proxyMode {
	case "nftables":
		ktest.RequireFeature(t, kernel.FeatureNFTables)
	case "ipvs":
		ktest.RequireFeature(t, kernel.FeatureIPVS)
	}
	node, peer := ktest.NewNetNS(t), ktest.NewNetNS(t)
	if err := node.AddVeth("eth0", kernel.LinkAttrs{MTU: 1500}, peer, "eth0", kernel.LinkAttrs{}); err != nil {
		t.Fatal(err)
	}
	if err := node.AddAddr("eth0", netip.MustParsePrefix("192.0.2.10/24")); err != nil {
		t.Fatal(err)
	}
	for _, ns := range []*kernel.NetNS{node, peer} {
		if err := ns.LinkUp("eth0"); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	b := &agentBed{t: t, node: node, store: labstore.Open(filepath.Join(dir, "store")), logs: &logBuffer{}}
	b.cfg = &Configuration{
		NodeName:         "n1",
		ClientConnection: ClientConnection{LabStore: b.store.Dir()},
		PodNetwork:       model.PodNetwork{Interface: model.InterfaceRouted, Encap: model.EncapVXLAN, EncapPolicy: model.EncapCrossSubnet},
		CNI:              CNIConfig{ConfDir: filepath.Join(dir, "net.d"), DataDir: filepath.Join(dir, "ipam")},
		Proxy:            ProxyConfig{Mode: proxyMode},
		SyncPeriod:       metav1.Duration{Duration: period},
		MinSyncPeriod:    metav1.Duration{Duration: 10 * time.Millisecond},
	}
	b.cfg.Default()
	if err := b.cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return b
}

// run starts the agent with the objects set so far.
func (b *agentBed) run() {
	b.t.Helper()
	b.apply()
	ctx, cancel := context.WithCancel(context.Background())
	b.cancel, b.done = cancel, make(chan error, 1)
	b.start = time.Now()
	a := New(Options{Config: b.cfg, NetNS: b.node, Logger: slog.New(logHandler{b: b.logs})})
	go func() { b.done <- a.Run(ctx) }()
	b.t.Cleanup(b.stop)
	b.t.Cleanup(func() {
		if b.t.Failed() || os.Getenv("KDIVE_TEST_AGENT_LOG") != "" {
			b.t.Logf("agent log:\n%s", b.logs.dump())
		}
	})
}

func (b *agentBed) stop() {
	if b.cancel == nil {
		return
	}
	b.cancel()
	b.cancel = nil
	if err := <-b.done; err != nil {
		b.t.Errorf("Run: %v", err)
	}
}

// apply writes the bed's objects to the store.
func (b *agentBed) apply() {
	b.t.Helper()
	if err := b.store.Update(func(s *labstore.Snapshot) error {
		s.Nodes, s.Services, s.EndpointSlices = b.nodes, b.services, b.slices
		return nil
	}); err != nil {
		b.t.Fatal(err)
	}
}

// addService adds a ClusterIP service default/name:http (80 -> 8080)
// with endpoints on n2.
func (b *agentBed) addService(name, clusterIP string, endpoints ...string) {
	port := func(p int32) *int32 { return &p }
	proto := corev1.ProtocolTCP
	portName := "http"
	ready := true
	b.services = append(b.services, corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeClusterIP, ClusterIP: clusterIP, ClusterIPs: []string{clusterIP},
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: proto}},
		},
	})
	s := discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: name + "-1", Namespace: "default", Labels: map[string]string{discoveryv1.LabelServiceName: name}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &portName, Port: port(8080), Protocol: &proto}},
	}
	n2 := "n2"
	for _, ip := range endpoints {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{
			Addresses: []string{ip}, NodeName: &n2, Conditions: discoveryv1.EndpointConditions{Ready: &ready},
		})
	}
	b.slices = append(b.slices, s)
}

func (b *agentBed) removeService(name string) {
	b.services = slices.DeleteFunc(b.services, func(s corev1.Service) bool { return s.Name == name })
	b.slices = slices.DeleteFunc(b.slices, func(s discoveryv1.EndpointSlice) bool { return s.Labels[discoveryv1.LabelServiceName] == name })
}

// get fetches a URL in the node's namespace.
func (b *agentBed) get(url string) (int, string) {
	b.t.Helper()
	timeout := 2 * time.Second
	if ktest.InVM() {
		timeout = 20 * time.Second // an emulated CPU on a loaded machine: 2 s ran out once
	}
	c := http.Client{Timeout: timeout, Transport: &http.Transport{DialContext: b.node.DialContext, DisableKeepAlives: true}}
	resp, err := c.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func (b *agentBed) healthz() (int, string) { return b.get("http://127.0.0.1:10256/healthz") }

// status is the agent's node-local /status: the detail /healthz leaves out.
func (b *agentBed) status() (int, string) { return b.get("http://127.0.0.1:10249/status") }

// metric is the value of one series, e.g. `kdive_sync_errors_total{part="proxy"}`
// (0 when absent).
func (b *agentBed) metric(series string) float64 {
	b.t.Helper()
	code, body := b.get("http://127.0.0.1:10249/metrics")
	if code != http.StatusOK {
		b.t.Fatalf("GET /metrics: %d %s", code, body)
	}
	for _, l := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(l, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				b.t.Fatalf("metric line %q: %v", l, err)
			}
			return f
		}
	}
	return 0
}

// run runs a command in the node's namespace and fails the test on error.
func (b *agentBed) sh(name string, args ...string) string {
	b.t.Helper()
	out, err := b.node.Run(context.Background(), "", name, args...)
	if err != nil {
		b.t.Fatal(err)
	}
	return out
}

// nftTable is `nft list table ip kdive-proxy` as the kernel prints it
// (with the real nft, whatever PATH says).
func (b *agentBed) nftTable() string {
	b.t.Helper()
	out, err := b.node.Run(context.Background(), "", realNft, "list", "table", "ip", "kdive-proxy")
	if err != nil {
		return "error: " + err.Error()
	}
	return out
}

// failureWindow is what a fault looked like from outside while it lasted.
type failureWindow struct {
	attempts []time.Time     // failed syncs, in order
	backoffs []time.Duration // the "retrying in" each announced
}

func (b *agentBed) failures(since time.Time) failureWindow {
	var w failureWindow
	for _, r := range b.logs.since(since, "sync failed; retrying") {
		w.attempts = append(w.attempts, r.At)
		d, err := time.ParseDuration(r.Attrs["in"])
		if err != nil {
			b.t.Fatalf("log record %s: no retry interval: %v", r, err)
		}
		w.backoffs = append(w.backoffs, d)
	}
	return w
}

func (w failureWindow) gaps() []time.Duration {
	var out []time.Duration
	for i := 1; i < len(w.attempts); i++ {
		out = append(out, w.attempts[i].Sub(w.attempts[i-1]).Round(time.Millisecond))
	}
	return out
}

// atFailure is the agent's state, and what /healthz and /status said, at
// one "sync failed; retrying" log call.
type atFailure struct {
	state  string
	code   int
	health string
	status string
}

// failureRecorder records the state at every failed sync, from inside the
// log call, before the agent can go on.
type failureRecorder struct {
	mu    sync.Mutex
	seen  []atFailure
	first chan atFailure
}

// recordFailures records state() at each failed sync until stop.
func (b *agentBed) recordFailures(state func() string) *failureRecorder {
	r := &failureRecorder{first: make(chan atFailure, 1)}
	b.logs.setHook(func(rec logRecord) {
		if rec.Msg != "sync failed; retrying" {
			return
		}
		code, body := b.healthz()
		_, status := b.status()
		f := atFailure{state(), code, body, status}
		r.mu.Lock()
		r.seen = append(r.seen, f)
		r.mu.Unlock()
		select {
		case r.first <- f:
		default:
		}
	})
	b.t.Cleanup(func() { b.logs.setHook(nil) })
	return r
}

// waitFirst returns the state at the first failed sync.
func (r *failureRecorder) waitFirst(t *testing.T, timeout time.Duration) atFailure {
	t.Helper()
	select {
	case f := <-r.first:
		return f
	case <-time.After(timeout):
		t.Fatal("no failed sync logged")
		return atFailure{}
	}
}

// states are the states recorded so far.
func (r *failureRecorder) states() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, f := range r.seen {
		out = append(out, f.state)
	}
	return out
}

// checkBackoff requires the retries to back off: the announced intervals
// double from 200 ms up to the sync period, and each retry comes when
// announced (no sooner: neither the periodic resync nor a change cuts the
// wait short; nor much later).
func (w failureWindow) checkBackoff(t *testing.T, period time.Duration) {
	t.Helper()
	if len(w.backoffs) < 3 {
		t.Fatalf("%d failed syncs logged, want at least 3 retries", len(w.backoffs))
	}
	want := 200 * time.Millisecond
	for i, d := range w.backoffs {
		if d != want {
			t.Errorf("retry %d announced in %s, want %s (doubling from 200ms up to the period %s); all: %v", i+1, d, want, period, w.backoffs)
			break
		}
		want = min(2*want, period)
	}
	for i, g := range w.gaps() {
		// Sooner than announced is a bug (the backoff was cut short); later
		// is the machine's load, reported only.
		if g < w.backoffs[i]-20*time.Millisecond {
			t.Errorf("retry %d came %s after the failure before, which announced %s; gaps %v", i+1, g, w.backoffs[i], w.gaps())
		} else if g > w.backoffs[i]+300*time.Millisecond {
			t.Logf("retry %d came %s after the failure before, which announced %s (a loaded machine)", i+1, g, w.backoffs[i])
		}
	}
}

// checkHealth requires kube-proxy's semantics while a change is stuck:
// /healthz answers 200 for two sync periods after the change, then 503
// with kube-proxy's body alone; /status names the error.
func (b *agentBed) checkHealth(changed time.Time, errPart string) time.Duration {
	b.t.Helper()
	period := b.cfg.SyncPeriod.Duration
	if code, body := b.healthz(); code != http.StatusOK && time.Since(changed) < 2*period-200*time.Millisecond {
		b.t.Errorf("/healthz %s after the change (window %s): %d %s", time.Since(changed).Round(time.Millisecond), 2*period, code, body)
	}
	var body string
	ktest.Eventually(b.t, 2*period+3*time.Second, "/healthz 503", ktest.Holds(func() bool {
		var code int
		code, body = b.healthz()
		return code == http.StatusServiceUnavailable
	}))
	after := time.Since(changed)
	if after < 2*period-100*time.Millisecond {
		b.t.Errorf("/healthz turned 503 %s after the change, before the %s window", after, 2*period)
	}
	b.checkBodies(body, errPart)
	return after
}

// checkBodies requires healthz, a /healthz body, to be kube-proxy's and
// nothing more (the health port answers anyone who reaches the node) and
// /status, node-local, to name errPart.
func (b *agentBed) checkBodies(healthz, errPart string) {
	b.t.Helper()
	var keys map[string]any
	if err := json.Unmarshal([]byte(healthz), &keys); err != nil {
		b.t.Errorf("/healthz body %q: %v", healthz, err)
	}
	for k := range keys {
		if k != "lastUpdated" && k != "currentTime" && k != "nodeEligible" {
			b.t.Errorf("/healthz body has %q, which kube-proxy's has not: %s", k, healthz)
		}
	}
	if strings.Contains(healthz, errPart) {
		b.t.Errorf("/healthz body shows the error (%q) to anyone reaching the node: %s", errPart, healthz)
	}
	if _, st := b.status(); !strings.Contains(st, errPart) {
		b.t.Errorf("/status does not name the error (%q): %s", errPart, st)
	}
}

// checkHealthy requires /healthz 200 and no error in /status.
func (b *agentBed) checkHealthy() {
	b.t.Helper()
	ktest.Eventually(b.t, 5*time.Second, "/healthz 200", ktest.Holds(func() bool {
		code, _ := b.healthz()
		sc, st := b.status()
		return code == http.StatusOK && sc == http.StatusOK && !strings.Contains(st, "lastError")
	}))
}

// firstSynced is when the first successful sync at or after t was logged.
func (b *agentBed) firstSynced(t time.Time) time.Time {
	b.t.Helper()
	var at time.Time
	ktest.Eventually(b.t, 10*time.Second, "a successful sync", ktest.Holds(func() bool {
		if rs := b.logs.since(t, "synced"); len(rs) > 0 {
			at = rs[0].At
			return true
		}
		return false
	}))
	return at
}

// bedResult logs a figure for docs/reliability.md.
func bedResult(t *testing.T, format string, args ...any) {
	t.Helper()
	t.Logf("RESULT %s: "+format, append([]any{t.Name()}, args...)...)
}

// TestAtomicityNFTMissing takes nft away from the agent's PATH and kills
// its running `nft -i` session while a service is being added: every sync
// fails (the dead session, then the `nft -f` it falls back to, then the
// retries' `nft -f`), the kernel keeps the table as it was, and putting
// nft back lets the agent converge. No nft process reaches the kernel, so
// this proves the agent's side of a failed sync (each failure seen and
// the table read inside it, backoff, /healthz, recovery, the session back),
// not that a transaction is atomic: TestAtomicityNFTKernelRejects does.
func TestAtomicityNFTMissing(t *testing.T) {
	if realNft == "" {
		t.Skip("needs nft")
	}
	const period = 1500 * time.Millisecond
	bed := newAgentBed(t, "nftables", period)
	// PATH without the system's sbin directories: nft comes only from bin.
	bin := t.TempDir()
	link := filepath.Join(bin, "nft")
	if err := os.Symlink(realNft, link); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+":/usr/local/bin:/usr/bin:/bin")
	if p, err := exec.LookPath("nft"); err != nil || p != link {
		t.Fatalf("nft resolves to %q (%v), want only %s", p, err, link)
	}
	bed.nodes = []corev1.Node{testNode("n1", "192.0.2.10", "10.244.1.0/24"), testNode("n2", "192.0.2.11", "10.244.2.0/24")}
	bed.addService("web", "10.96.0.10", "10.244.2.5", "10.244.2.6")
	bed.run()
	ktest.Eventually(t, 10*time.Second, "web's rules", ktest.Holds(func() bool { return strings.Contains(bed.nftTable(), "10.96.0.10 . tcp . 80") }))
	// A small change goes through the agent's long-running `nft -i`.
	bed.addService("warm", "10.96.0.30", "10.244.2.9")
	bed.apply()
	ktest.Eventually(t, 10*time.Second, "warm's rules", ktest.Holds(func() bool { return strings.Contains(bed.nftTable(), "10.96.0.30 . tcp . 80") }))
	bed.checkHealthy()
	session := nftSessions(t, bed.node)
	if len(session) == 0 {
		t.Fatal("no nft -i session in the node after a small change")
	}
	before := bed.nftTable()
	errs0 := bed.metric(`kdive_sync_errors_total{part="proxy"}`)

	// nft goes away and the running session dies (SIGKILL: a running
	// `nft -i` would go on without the binary); a service is added. Every
	// failed attempt, from the first, is recorded inside its log call and
	// must leave the table exactly as it was.
	if err := os.Remove(link); err != nil {
		t.Fatal(err)
	}
	for _, pid := range session {
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatalf("kill the nft -i session %d: %v", pid, err)
		}
	}
	rec := bed.recordFailures(bed.nftTable)
	changed := time.Now()
	bed.addService("api", "10.96.0.20", "10.244.2.7")
	bed.apply()
	ktest.Eventually(t, 10*time.Second, "three failed retries", ktest.Holds(func() bool { return len(bed.failures(changed).attempts) >= 4 }))
	unhealthyAfter := bed.checkHealth(changed, "nft")
	// The table was read at every failed sync so far (a read may still be
	// running inside the last one's log call; the next retry is 1.5 s away).
	ktest.Eventually(t, time.Second, "the table read at every failed sync", func() error {
		if n, m := len(rec.states()), len(bed.failures(changed).attempts); n != m {
			return fmt.Errorf("read at %d of %d failed syncs", n, m)
		}
		return nil
	})
	bed.logs.setHook(nil)
	fw := bed.failures(changed)
	fw.checkBackoff(t, period)
	first := bed.logs.since(changed, "sync failed; retrying")[0]
	if e := first.Attrs["err"]; !strings.Contains(e, "nftables proxy") || !strings.Contains(e, `"nft": executable file not found`) {
		t.Errorf("the log does not say nft is missing: %s", first)
	}
	if got := bed.metric(`kdive_sync_errors_total{part="proxy"}`); got < errs0+float64(len(fw.attempts)) {
		t.Errorf(`kdive_sync_errors_total{part="proxy"} = %v after %d failed syncs (was %v)`, got, len(fw.attempts), errs0)
	}
	during := rec.states()
	for i, tbl := range during {
		if tbl != before {
			t.Errorf("failed sync %d changed the table:\nbefore:\n%s\nduring:\n%s", i+1, before, tbl)
		}
	}
	checked := len(during)
	if got := bed.nftTable(); got != before {
		t.Errorf("the table changed while nft was missing:\nbefore:\n%s\nnow:\n%s", before, got)
	}

	// nft comes back: the agent converges without a restart.
	back := time.Now()
	if err := os.Symlink(realNft, link); err != nil {
		t.Fatal(err)
	}
	took := ktest.Eventually(t, 40*time.Second, "api's rules", ktest.Holds(func() bool { return strings.Contains(bed.nftTable(), "10.96.0.20 . tcp . 80") }))
	bed.checkHealthy()
	recovered := bed.firstSynced(back)
	// Small changes go through the long-running `nft -i` again: nft
	// missing for a while is no reason to give up the session for good.
	sessions := len(nftSessions(t, bed.node))
	bed.addService("extra", "10.96.0.40", "10.244.2.8")
	bed.apply()
	ktest.Eventually(t, 10*time.Second, "extra's rules", ktest.Holds(func() bool { return strings.Contains(bed.nftTable(), "10.96.0.40 . tcp . 80") }))
	if now := len(nftSessions(t, bed.node)); now <= sessions {
		t.Errorf("no nft -i session in the node after nft came back (%d before the change, %d after): the proxier stays on nft -f", sessions, now)
	}
	fw = bed.failures(changed)
	bedResult(t, "%d failed syncs over %s, table unchanged at each (%d checked), retries announced %v, gaps %v, /healthz 503 after %s; converged %s after nft came back (rules seen after %s)",
		len(fw.attempts), back.Sub(changed).Round(time.Millisecond), checked, fw.backoffs, fw.gaps(), unhealthyAfter.Round(time.Millisecond),
		recovered.Sub(back).Round(time.Millisecond), took.Round(time.Millisecond))
}

// nftSessions are the pids of this process's `nft -i` children in ns.
func nftSessions(t *testing.T, ns *kernel.NetNS) []int {
	t.Helper()
	var want syscall.Stat_t
	if err := syscall.Stat(ns.Path(), &want); err != nil {
		t.Fatal(err)
	}
	netns := fmt.Sprintf("net:[%d]", want.Ino)
	dirs, _ := os.ReadDir("/proc")
	var pids []int
	for _, d := range dirs {
		pid := d.Name()
		n, err := strconv.Atoi(pid)
		if err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + pid + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		if len(f) < 2 || f[1] != strconv.Itoa(os.Getpid()) {
			continue
		}
		cmd, _ := os.ReadFile("/proc/" + pid + "/cmdline")
		if l, _ := os.Readlink("/proc/" + pid + "/ns/net"); l == netns && strings.HasSuffix(string(cmd), "nft\x00-i\x00") {
			pids = append(pids, n)
		}
	}
	return pids
}

// TestAtomicityNFTKernelRejects: someone adds an element of their own to
// the agent's service-ips map (a drop for an address), and a service with
// that address is then created. The kernel refuses the transaction that
// adds the service (the key exists with another verdict): the table stays
// as it was, the error names the service, and the retry, a whole-table
// replace, programs the service and drops the intruder.
func TestAtomicityNFTKernelRejects(t *testing.T) {
	// A long period: no periodic resync (which repairs the intruder as
	// drift) between planting it and the service's arrival.
	const period = 20 * time.Second
	bed := newAgentBed(t, "nftables", period)
	bed.nodes = []corev1.Node{testNode("n1", "192.0.2.10", "10.244.1.0/24"), testNode("n2", "192.0.2.11", "10.244.2.0/24")}
	bed.addService("web", "10.96.0.10", "10.244.2.5", "10.244.2.6")
	bed.run()
	ktest.Eventually(t, 10*time.Second, "web's rules", ktest.Holds(func() bool { return strings.Contains(bed.nftTable(), "10.96.0.10 . tcp . 80") }))
	bed.checkHealthy()
	bed.sh("nft", "add", "element", "ip", "kdive-proxy", "service-ips", "{ 10.96.0.30 . tcp . 80 : drop }")
	before := bed.nftTable()
	errs0 := bed.metric(`kdive_sync_errors_total{part="proxy"}`)

	recorder := bed.recordFailures(bed.nftTable)
	changed := time.Now()
	bed.addService("api", "10.96.0.30", "10.244.2.7")
	bed.apply()
	s := recorder.waitFirst(t, 10*time.Second)
	failedAt := bed.failures(changed).attempts[0]
	if s.state != before {
		t.Errorf("the refused transaction changed the table:\nbefore:\n%s\nduring:\n%s", before, s.state)
	}
	rec := bed.logs.since(changed, "sync failed; retrying")[0]
	if e := rec.Attrs["err"]; !strings.Contains(e, "sync service default/api") || !strings.Contains(e, "File exists") {
		t.Errorf("the log does not name the refused service and the kernel's reason: %s", rec)
	}
	if rec.Attrs["in"] != "200ms" {
		t.Errorf("first retry announced in %s, want 200ms", rec.Attrs["in"])
	}
	// Within the window: still healthy; /status shows the error.
	if s.code != http.StatusOK || !strings.Contains(s.status, "default/api") || strings.Contains(s.health, "default/api") {
		t.Errorf("right after the failure: /healthz %d %s, /status %s; want 200 with kube-proxy's body, /status naming the error", s.code, s.health, s.status)
	}
	took := ktest.Eventually(t, 10*time.Second, "api's rules", ktest.Holds(func() bool {
		tbl := bed.nftTable()
		return strings.Contains(tbl, `10.96.0.30 . tcp . 80 comment "default/api:http" : goto`)
	}))
	recovered := bed.firstSynced(failedAt)
	bed.checkHealthy()
	if got := bed.metric(`kdive_sync_errors_total{part="proxy"}`); got != errs0+1 {
		t.Errorf(`kdive_sync_errors_total{part="proxy"} = %v, want %v`, got, errs0+1)
	}
	if tbl := bed.nftTable(); strings.Contains(tbl, "10.96.0.30 . tcp . 80 : drop") {
		t.Errorf("the intruding element survived the recovery:\n%s", tbl)
	}
	bedResult(t, "1 refused transaction (EEXIST), table unchanged; retried %s later (announced 200ms), converged %s after the change",
		recovered.Sub(failedAt).Round(time.Millisecond), took.Round(time.Millisecond))
}

var (
	iptCounters = regexp.MustCompile(`\[\d+:\d+\]`)
	svcChainOf  = regexp.MustCompile(`-A KUBE-SERVICES .*--comment "?default/api:http cluster IP"? .* -j (KUBE-SVC-[A-Z0-9]+)`)
)

// natTable is `iptables-save -t nat` without comments and counters.
func (b *agentBed) natTable() string {
	b.t.Helper()
	var out []string
	for _, l := range strings.Split(b.sh("iptables-save", "-t", "nat"), "\n") {
		if !strings.HasPrefix(l, "#") {
			out = append(out, iptCounters.ReplaceAllString(l, ""))
		}
	}
	return strings.Join(out, "\n")
}

// TestAtomicityIPTablesChainInUse: an administrator's chain jumps to the
// KUBE-SVC chain of a service, which is then deleted. The kernel refuses
// to delete a chain something jumps to (EBUSY): the partial sync that
// tries fails whole, leaving the nat table exactly as it was; the retry, a
// full sync, leaves chains that others jump to in place and removes the
// rest of the service; once the administrator's rule goes, the next
// periodic sync removes the chain.
func TestAtomicityIPTablesChainInUse(t *testing.T) {
	const period = time.Second
	bed := newAgentBed(t, "iptables", period)
	bed.nodes = []corev1.Node{testNode("n1", "192.0.2.10", "10.244.1.0/24"), testNode("n2", "192.0.2.11", "10.244.2.0/24")}
	bed.addService("web", "10.96.0.10", "10.244.2.5", "10.244.2.6")
	bed.addService("api", "10.96.0.20", "10.244.2.7")
	bed.run()
	var svcChain string
	ktest.Eventually(t, 15*time.Second, "api's chains", ktest.Holds(func() bool {
		m := svcChainOf.FindStringSubmatch(bed.natTable())
		if m != nil {
			svcChain = m[1]
		}
		return m != nil
	}))
	bed.checkHealthy()
	bed.sh("iptables", "-t", "nat", "-N", "ADMIN-TEST")
	bed.sh("iptables", "-t", "nat", "-A", "ADMIN-TEST", "-j", svcChain)
	before := bed.natTable()
	errs0 := bed.metric(`kdive_sync_errors_total{part="proxy"}`)

	recorder := bed.recordFailures(bed.natTable)
	changed := time.Now()
	bed.removeService("api")
	bed.apply()
	s := recorder.waitFirst(t, 10*time.Second)
	failedAt := bed.failures(changed).attempts[0]
	if s.state != before {
		t.Errorf("the refused restore changed the nat table:\nbefore:\n%s\nduring:\n%s", before, s.state)
	}
	rec := bed.logs.since(changed, "sync failed; retrying")[0]
	if e := rec.Attrs["err"]; !strings.Contains(e, "iptables proxy") || !strings.Contains(e, svcChain) || !strings.Contains(e, "Device or resource busy") {
		t.Errorf("the log does not name the chain the kernel refused to delete (%s) and why: %s", svcChain, rec)
	}
	if s.code != http.StatusOK || !strings.Contains(s.status, svcChain) || strings.Contains(s.health, svcChain) {
		t.Errorf("right after the failure: /healthz %d %s, /status %s; want 200 with kube-proxy's body, /status naming the error", s.code, s.health, s.status)
	}
	took := ktest.Eventually(t, 10*time.Second, "api's service rule gone", ktest.Holds(func() bool {
		return !regexp.MustCompile(`(?m)^-A KUBE-SERVICES .*default/api:http`).MatchString(bed.natTable())
	}))
	recovered := bed.firstSynced(failedAt)
	bed.checkHealthy()
	if got := bed.metric(`kdive_sync_errors_total{part="proxy"}`); got != errs0+1 {
		t.Errorf(`kdive_sync_errors_total{part="proxy"} = %v, want %v`, got, errs0+1)
	}
	if nat := bed.natTable(); !strings.Contains(nat, ":"+svcChain) || !strings.Contains(nat, "default/web:http") {
		t.Errorf("want %s kept while ADMIN-TEST jumps to it, and web's rules:\n%s", svcChain, nat)
	}

	// The administrator's rule goes: the next periodic sync removes the chain.
	bed.sh("iptables", "-t", "nat", "-F", "ADMIN-TEST")
	bed.sh("iptables", "-t", "nat", "-X", "ADMIN-TEST")
	gone := ktest.Eventually(t, 5*time.Second, "api's chain gone", ktest.Holds(func() bool { return !strings.Contains(bed.natTable(), svcChain) }))
	if gone > period+500*time.Millisecond {
		t.Logf("the stale chain went %s after the rule, more than a sync period (a loaded machine)", gone)
	}
	bedResult(t, "1 refused restore (EBUSY), nat table unchanged; retried %s later (announced 200ms), service gone %s after the change; the chain in use removed %s after the foreign rule went",
		recovered.Sub(failedAt).Round(time.Millisecond), took.Round(time.Millisecond), gone.Round(time.Millisecond))
}

// TestAtomicityPodNetUplinkDown: n1 routes n3's block over VXLAN (across
// subnets); the uplink goes down, and in one change n2, in n1's subnet,
// joins and n3 leaves. The pod network is not all-or-nothing: it applies
// every object it can and retries the others. n2's route via eth0 is
// refused by netlink on every sync; n3's route goes at the first one; every
// other route stays as it was. Once eth0 is up again n2 is routed.
func TestAtomicityPodNetUplinkDown(t *testing.T) {
	const period = 1500 * time.Millisecond
	bed := newAgentBed(t, "none", period)
	n1, n2, n3 := testNode("n1", "192.0.2.10", "10.244.1.0/24"), testNode("n2", "192.0.2.11", "10.244.2.0/24"), testNode("n3", "198.51.100.10", "10.244.3.0/24")
	bed.nodes = []corev1.Node{n1, n3}
	bed.run()
	ktest.Eventually(t, 10*time.Second, "n3's route", ktest.Holds(func() bool {
		return strings.Contains(routesText(t, bed.node), "10.244.3.0/24 via 10.244.3.0 dev vxlan.kdive onlink")
	}))
	bed.checkHealthy()
	bed.sh("ip", "link", "set", "eth0", "down")
	before := routesText(t, bed.node)
	errs0 := bed.metric(`kdive_sync_errors_total{part="podnet"}`)

	rec := bed.recordFailures(func() string { return routesText(t, bed.node) })
	changed := time.Now()
	bed.nodes = []corev1.Node{n1, n2}
	bed.apply()
	// What each failed sync must leave: the routes before, without n3's.
	const n3Route = "10.244.3.0/24 via 10.244.3.0 dev vxlan.kdive onlink"
	var kept []string
	for _, l := range strings.Split(before, "\n") {
		if !strings.Contains(l, n3Route) {
			kept = append(kept, l)
		}
	}
	want := strings.Join(kept, "\n")
	if len(kept) == len(strings.Split(before, "\n")) {
		t.Fatalf("n3's route is not among the routes before:\n%s", before)
	}
	ktest.Eventually(t, 10*time.Second, "three failed retries", ktest.Holds(func() bool { return len(bed.failures(changed).attempts) >= 4 }))
	unhealthyAfter := bed.checkHealth(changed, "10.244.2.0/24")
	bed.logs.setHook(nil)
	fw := bed.failures(changed)
	fw.checkBackoff(t, period)
	first := bed.logs.since(changed, "sync failed; retrying")[0]
	if e := first.Attrs["err"]; !strings.Contains(e, "sync n2 peer route 10.244.2.0/24") {
		t.Errorf("the log does not name n2's route: %s", first)
	}
	if got := bed.metric(`kdive_sync_errors_total{part="podnet"}`); got < errs0+float64(len(fw.attempts)) {
		t.Errorf(`kdive_sync_errors_total{part="podnet"} = %v after %d failed syncs (was %v)`, got, len(fw.attempts), errs0)
	}
	during := rec.states()
	for i, rt := range during {
		if rt != want {
			t.Errorf("failed sync %d: want the routes before without n3's:\nbefore:\n%s\nduring:\n%s", i+1, before, rt)
		}
	}
	checked := len(during)

	back := time.Now()
	bed.sh("ip", "link", "set", "eth0", "up")
	took := ktest.Eventually(t, 40*time.Second, "n2's route", ktest.Holds(func() bool {
		return strings.Contains(routesText(t, bed.node), "10.244.2.0/24 via 192.0.2.11 dev eth0")
	}))
	bed.checkHealthy()
	recovered := bed.firstSynced(back)
	if rt := routesText(t, bed.node); strings.Contains(rt, n3Route) || !strings.Contains(rt, "blackhole 10.244.1.0/24") {
		t.Errorf("routes after recovery:\n%s", rt)
	}
	fw = bed.failures(changed)
	bedResult(t, "%d failed syncs over %s, n3's route gone and the others unchanged at each (%d checked), retries announced %v, gaps %v, /healthz 503 after %s; converged %s after eth0 came up (route seen after %s)",
		len(fw.attempts), back.Sub(changed).Round(time.Millisecond), checked, fw.backoffs, fw.gaps(), unhealthyAfter.Round(time.Millisecond),
		recovered.Sub(back).Round(time.Millisecond), took.Round(time.Millisecond))
}
