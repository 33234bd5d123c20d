package ktest

import (
	"bufio"
	"context"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kdive/kdive/internal/kernel"
)

// A Monitor collects the lines a monitoring command (`nft monitor`, `ip
// monitor route`) prints in a namespace, with the time each arrived: the
// kernel's change feed, to show that something did or did not change.
type Monitor struct {
	t      testing.TB
	ns     *kernel.NetNS
	cmd    *exec.Cmd
	marker marker
	mu     sync.Mutex
	lines  []Event
	done   chan struct{}
	n      int // markers made
}

// Event is one line a Monitor saw.
type Event struct {
	At   time.Time
	Text string
}

// A marker is a change the monitored command reports, made and undone at
// once: seeing it undone proves the command has subscribed (StartMonitor)
// or has printed everything that happened before it (Finish), since the
// kernel reports one namespace's changes in order. Its lines, and the
// generation line `nft monitor` prints after each of its transactions, are
// not recorded.
type marker struct {
	tag string // in every line a marker causes
	// make and undo are the commands of the n-th marker; undone tells the
	// line that reports it undone.
	make, undo func(n int) []string
	undone     func(n int, line string) bool
}

// markerFor returns the marker argv's command reports: a table for `nft
// monitor`, a route in a table of its own for `ip monitor` of routes.
func markerFor(argv []string) (marker, error) {
	switch {
	case argv[0] == "nft" && slices.Contains(argv, "monitor"):
		table := func(n int) string { return fmt.Sprintf("ktest-marker-%d", n) }
		return marker{tag: "ktest-marker-",
			make:   func(n int) []string { return []string{"nft", "add", "table", "inet", table(n)} },
			undo:   func(n int) []string { return []string{"nft", "delete", "table", "inet", table(n)} },
			undone: func(n int, line string) bool { return line == "delete table inet "+table(n) }}, nil
	case argv[0] == "ip" && slices.Contains(argv, "monitor"):
		objects := argv[slices.Index(argv, "monitor")+1:]
		if len(objects) > 0 && !slices.Contains(objects, "route") && !slices.Contains(objects, "all") {
			break
		}
		// 192.0.2.255 (TEST-NET-1) in table 4207, which nothing else
		// uses; the metric tells the markers apart.
		route := func(verb string, n int) []string {
			return []string{"ip", "route", verb, "blackhole", "192.0.2.255/32", "table", "4207", "metric", fmt.Sprint(n)}
		}
		return marker{tag: "192.0.2.255 table 4207",
			make: func(n int) []string { return route("add", n) },
			undo: func(n int) []string { return route("del", n) },
			undone: func(n int, line string) bool {
				return strings.HasPrefix(line, "Deleted ") && strings.Contains(line, "192.0.2.255 table 4207") &&
					strings.HasSuffix(strings.TrimSpace(line), fmt.Sprintf("metric %d", n))
			}}, nil
	}
	return marker{}, fmt.Errorf("ktest: no marker change known for %q", strings.Join(argv, " "))
}

// StartMonitor runs argv in ns until Finish (or the test's end), and
// returns once the command has subscribed: every change made after it
// returns is seen.
func StartMonitor(t testing.TB, ns *kernel.NetNS, argv ...string) *Monitor {
	t.Helper()
	mk, err := markerFor(argv)
	if err != nil {
		t.Fatal(err)
	}
	m := &Monitor{t: t, ns: ns, marker: mk, cmd: exec.Command(argv[0], argv[1:]...), done: make(chan struct{})}
	out, err := m.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := ns.Start(m.cmd); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(m.done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			m.mu.Lock()
			m.lines = append(m.lines, Event{time.Now(), sc.Text()})
			m.mu.Unlock()
		}
	}()
	t.Cleanup(m.stop)
	// The command subscribes some time after it starts: make the marker
	// until it is seen.
	Eventually(t, 10*time.Second, strings.Join(argv, " ")+" to subscribe", m.mark)
	return m
}

// mark makes and undoes a marker change, waits a moment for the command
// to print it undone and then drops the lines of every marker so far.
func (m *Monitor) mark() error {
	ctx := context.Background()
	m.n++
	for _, argv := range [][]string{m.marker.make(m.n), m.marker.undo(m.n)} {
		if out, err := m.ns.Run(ctx, "", argv[0], argv[1:]...); err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
	}
	deadline := time.Now().Add(500 * time.Millisecond)
	for {
		m.mu.Lock()
		seen := slices.ContainsFunc(m.lines, func(e Event) bool { return m.marker.undone(m.n, e.Text) })
		if seen {
			m.lines = m.dropMarkers(m.lines)
		}
		m.mu.Unlock()
		if seen {
			return nil
		}
		select {
		case <-m.done:
			return fmt.Errorf("the monitor ended")
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("marker %d (%s) not seen undone", m.n, strings.Join(m.marker.undo(m.n), " "))
		}
	}
}

// dropMarkers returns lines without the markers' lines and the generation
// line that follows each of them.
func (m *Monitor) dropMarkers(lines []Event) []Event {
	var kept []Event
	afterMarker := false
	for _, e := range lines {
		switch {
		case strings.Contains(e.Text, m.marker.tag):
			afterMarker = true
		case afterMarker && strings.HasPrefix(e.Text, "# new generation"):
			afterMarker = false
		default:
			afterMarker = false
			kept = append(kept, e)
		}
	}
	return kept
}

// Finish waits until the command has printed every change made before the
// call, stops it and returns every line it printed.
func (m *Monitor) Finish() []Event {
	if m.cmd.ProcessState == nil {
		if err := m.mark(); err != nil {
			m.t.Errorf("monitor's last changes: %v", err)
		}
		m.stop()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lines
}

// stop ends the command, if it still runs.
func (m *Monitor) stop() {
	if m.cmd.ProcessState == nil {
		_ = m.cmd.Process.Kill()
		<-m.done
		_ = m.cmd.Wait()
	}
}
