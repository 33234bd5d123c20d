package ktest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/kdive/kdive/internal/wait"
)

// Eventually calls cond every 10 ms until it returns nil and returns how
// long that took, or fails the test with cond's last error, naming what it
// waited for, when that has not happened within timeout: how tests wait
// for the thing rather than for time.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() error) time.Duration {
	t.Helper()
	start := time.Now()
	if err := wait.Until(context.Background(), timeout, 10*time.Millisecond, cond); err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
	return time.Since(start)
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
