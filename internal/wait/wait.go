// Package wait polls a condition until it holds, a deadline passes or the
// context ends: the one polling loop of the lab and the commands. Tests
// wait with ktest.Eventually, which fails the test instead.
package wait

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Until calls cond every interval until it returns nil, timeout passes
// (its last error is returned, wrapped) or ctx ends.
func Until(ctx context.Context, timeout, interval time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %s: %w", timeout, err)
		}
		select {
		case <-ctx.Done():
			return errors.Join(err, ctx.Err())
		case <-time.After(interval):
		}
	}
}
