package agent

import (
	"context"
	"errors"
	"sync/atomic"
	"time"
)

// A reconciler programs one half of the node from the informers' caches:
// the pod network (podnetRunner) or the service proxy (proxyRunner);
// NetworkPolicy will be the third. Each is told only that something it
// depends on changed, and reads what it needs itself; sync must be safe
// to call again with nothing changed.
type reconciler interface {
	// name is the part's label in metrics (kdive_sync_errors_total{part})
	// and logs: "podnet" or "proxy".
	name() string
	// sync programs the part. full asks for everything to be re-applied
	// (the periodic resync, a retry after a failure), not only what
	// changed. An error wrapping ErrNotReady means "wait for the cluster".
	sync(ctx context.Context, full bool) error
}

// part is a reconciler in the agent's loop. Event handlers mark it dirty;
// everything else belongs to the loop's goroutine. Each part has its own
// backoff: one failing does not delay or block the other.
type part struct {
	reconciler
	dirty   atomic.Bool // a change to sync; set by the informers' handlers
	full    bool        // the next sync is a full one
	retryAt time.Time   // a retry after a failure is pending; zero when none
	backoff time.Duration
	failed  bool // the last sync failed (not ready is no failure)
}

// due tells whether the part should sync now, and whether fully. While a
// retry is pending, changes and resyncs wait for it: the retry is a full
// sync and takes them along.
func (p *part) due(now time.Time) (run, full bool) {
	if !p.retryAt.IsZero() {
		if now.Before(p.retryAt) {
			return false, false
		}
		p.retryAt, p.full = time.Time{}, true
	}
	dirty := p.dirty.Swap(false)
	run, full = dirty || p.full, p.full
	p.full = false
	return run, full
}

// mark asks for a sync of parts soon; marks coalesce. A nil part (a half
// this agent does not run) is skipped.
func (a *Agent) mark(parts ...*part) {
	for _, p := range parts {
		if p == nil {
			continue
		}
		p.dirty.Store(true)
		a.health.changed(p.name())
	}
	select {
	case a.trigger <- struct{}{}:
	default:
	}
}

// Trigger asks for a sync of every part soon; triggers coalesce.
func (a *Agent) Trigger() { a.mark(a.parts...) }

// loop runs the parts, in order, whenever one is due: marked by a change,
// at the periodic resync (a full sync of every part), or at its retry (a
// full sync of that part). Syncs are at least MinSyncPeriod apart, and
// changes arriving meanwhile coalesce.
func (a *Agent) loop(ctx context.Context) error {
	resync := time.NewTicker(a.cfg.SyncPeriod.Duration)
	defer resync.Stop()
	var retry <-chan time.Time
	a.Trigger()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-a.trigger:
		case <-resync.C:
			for _, p := range a.parts {
				p.full = true
			}
		case <-retry:
		}
		start := time.Now()
		ran := false
		for _, p := range a.parts {
			if run, full := p.due(start); run {
				a.syncPart(ctx, p, full)
				ran = true
			}
		}
		retry = a.nextRetry()
		if !ran {
			continue // every marked part is backing off
		}
		if a.allSynced() {
			a.log.Debug("synced", "took", time.Since(start))
		}
		// Bound the frequency: changes arriving meanwhile coalesce.
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(a.cfg.MinSyncPeriod.Duration - time.Since(start)):
		}
	}
}

// syncPart syncs one part and records the outcome: health first (the log
// line's readers may ask /healthz), then the log, and the backoff.
func (a *Agent) syncPart(ctx context.Context, p *part, full bool) {
	start := time.Now()
	err := p.sync(ctx, full)
	a.health.synced(p.name(), err)
	switch {
	case err == nil:
		p.backoff, p.failed = 0, false
		a.log.Debug("part synced", "part", p.name(), "full", full, "took", time.Since(start))
	case errors.Is(err, ErrNotReady):
		// The node's update marks the part again.
		p.backoff, p.failed = 0, false
		a.log.Info("waiting", "part", p.name(), "reason", err)
	default:
		// Doubling from 200 ms, up to a sync period (30 s at most).
		p.backoff = min(max(2*p.backoff, 200*time.Millisecond), 30*time.Second, a.cfg.SyncPeriod.Duration)
		p.retryAt, p.failed = time.Now().Add(p.backoff), true
		a.log.Error("sync failed; retrying", "part", p.name(), "err", err, "in", p.backoff)
	}
}

// allSynced tells whether no part's last sync failed.
func (a *Agent) allSynced() bool {
	for _, p := range a.parts {
		if p.failed {
			return false
		}
	}
	return true
}

// nextRetry fires at the earliest pending retry; nil when none.
func (a *Agent) nextRetry() <-chan time.Time {
	var next time.Time
	for _, p := range a.parts {
		if !p.retryAt.IsZero() && (next.IsZero() || p.retryAt.Before(next)) {
			next = p.retryAt
		}
	}
	if next.IsZero() {
		return nil
	}
	return time.After(time.Until(next))
}
