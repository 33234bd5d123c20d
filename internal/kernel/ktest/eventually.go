package ktest

import (
	"context"
	"testing"
	"time"

	"github.com/kdive/kdive/internal/wait"
)

// Eventually calls cond every 20 ms until it returns nil and fails the test
// with cond's last error, naming what it waited for, when that has not
// happened within timeout: how tests wait for the thing rather than for
// time.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	if err := wait.Until(context.Background(), timeout, 20*time.Millisecond, cond); err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}
