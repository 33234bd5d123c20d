package ktest

import (
	"errors"
	"testing"
	"time"
)

// Eventually calls cond until it returns nil and returns how long that
// took, or fails the test with cond's last error, naming what it waited
// for, when that has not happened within timeout: how tests wait for the
// thing rather than for time. It calls at once, then after 10 ms,
// backing off to every 50 ms, so a condition that is costly to check does
// not keep a busy machine busier, and a wait it times stays precise.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() error) time.Duration {
	t.Helper()
	start := time.Now()
	interval := 10 * time.Millisecond
	for {
		err := cond()
		if err == nil {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			t.Fatalf("waiting for %s: not within %s: %v", what, timeout, err)
		}
		time.Sleep(interval)
		interval = min(interval*2, 50*time.Millisecond)
	}
}

// Holds makes a yes-or-no condition one for Eventually.
func Holds(cond func() bool) func() error {
	return func() error {
		if !cond() {
			return errNotYet
		}
		return nil
	}
}

var errNotYet = errors.New("not yet")
