package ktest

import (
	"bufio"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/kdive/kdive/internal/kernel"
)

// A Monitor collects the lines a monitoring command (`nft monitor`, `ip
// monitor route`) prints in a namespace, with the time each arrived: the
// kernel's change feed, to show that something did or did not change.
type Monitor struct {
	cmd   *exec.Cmd
	mu    sync.Mutex
	lines []Event
	done  chan struct{}
}

// Event is one line a Monitor saw.
type Event struct {
	At   time.Time
	Text string
}

// StartMonitor runs argv in ns until Finish (or the test's end). The
// command subscribes asynchronously: callers wait a moment before changes
// they want seen.
func StartMonitor(t testing.TB, ns *kernel.NetNS, argv ...string) *Monitor {
	t.Helper()
	m := &Monitor{cmd: exec.Command(argv[0], argv[1:]...), done: make(chan struct{})}
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
	t.Cleanup(func() { m.Finish() })
	return m
}

// Finish stops the command and returns every line it printed.
func (m *Monitor) Finish() []Event {
	if m.cmd.ProcessState == nil {
		_ = m.cmd.Process.Kill()
		<-m.done
		_ = m.cmd.Wait()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lines
}
