package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// health is what /healthz and /livez report, kube-proxy style, over the
// agent's parts: healthy once every part synced (or waits for the
// cluster: a pod network without spec.podCIDR is no reason to fail the
// proxy's health) and the whole agent synced at least once, as long as no
// part has had a change (or failed sync) waiting to be programmed for more
// than two sync periods; the body names the parts' last errors.
type health struct {
	mu          sync.Mutex
	period      time.Duration
	lastSuccess time.Time // when a sync last left no part failing
	parts       map[string]*partHealth
}

type partHealth struct {
	pendingFrom time.Time // first unprogrammed change; zero when none
	lastError   string
	ready       bool // synced at least once, or waiting for the cluster
}

func (h *health) part(name string) *partHealth {
	if h.parts == nil {
		h.parts = map[string]*partHealth{}
	}
	p := h.parts[name]
	if p == nil {
		p = &partHealth{}
		h.parts[name] = p
	}
	return p
}

func (h *health) changed(part string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if p := h.part(part); p.pendingFrom.IsZero() {
		p.pendingFrom = time.Now()
	}
}

// synced records a sync of part. An error wrapping ErrNotReady is no
// failure: the part waits for the cluster, with nothing pending.
func (h *health) synced(part string, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	p := h.part(part)
	if err != nil && !errors.Is(err, ErrNotReady) {
		p.lastError = err.Error()
		if p.pendingFrom.IsZero() {
			p.pendingFrom = time.Now()
		}
		return
	}
	p.pendingFrom, p.lastError, p.ready = time.Time{}, "", true
	if err != nil {
		return
	}
	for _, q := range h.parts {
		if q.lastError != "" {
			return
		}
	}
	h.lastSuccess = time.Now()
}

// state is what the handlers report: healthy or not, and the parts' last
// errors (by part name).
func (h *health) state(now time.Time) (ok bool, lastError string) {
	ok = !h.lastSuccess.IsZero()
	var errs []string
	for _, name := range slices.Sorted(maps.Keys(h.parts)) {
		p := h.parts[name]
		if !p.ready || !p.pendingFrom.IsZero() && now.Sub(p.pendingFrom) >= 2*h.period {
			ok = false
		}
		if p.lastError != "" {
			errs = append(errs, p.lastError)
		}
	}
	return ok, strings.Join(errs, "; ")
}

type healthReply struct {
	LastUpdated  time.Time `json:"lastUpdated"`
	CurrentTime  time.Time `json:"currentTime"`
	NodeEligible *bool     `json:"nodeEligible,omitempty"`
	LastError    string    `json:"lastError,omitempty"`
}

func (h *health) handler(withNode bool) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		h.mu.Lock()
		now := time.Now()
		ok, lastError := h.state(now)
		r := healthReply{LastUpdated: h.lastSuccess, CurrentTime: now, LastError: lastError}
		h.mu.Unlock()
		if withNode {
			eligible := true
			r.NodeEligible = &eligible
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_ = json.NewEncoder(w).Encode(r)
	}
}

// serve runs the health and metrics servers until ctx ends. An address
// that cannot be bound is an error: two agents on one node, or kube-proxy
// still running, should not go unnoticed.
func (a *Agent) serve(ctx context.Context) (func(), error) {
	var servers []*http.Server
	start := func(addr string, h http.Handler) error {
		if addr == "" || addr == "0" {
			return nil
		}
		// Listen in the node's namespace: in a test or a lab the agent
		// serves the node it manages.
		var ln net.Listener
		err := a.opts.NetNS.Do(func() (err error) {
			ln, err = net.Listen("tcp", addr)
			return err
		})
		if err != nil {
			return fmt.Errorf("listen on %s: %w", addr, err)
		}
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
		servers = append(servers, srv)
		go func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				a.log.Error("server stopped", "addr", addr, "err", err)
			}
		}()
		return nil
	}
	stop := func() {
		for _, s := range servers {
			c, cancel := context.WithTimeout(context.Background(), time.Second)
			_ = s.Shutdown(c)
			cancel()
		}
	}
	hm := http.NewServeMux()
	hm.Handle("/healthz", a.health.handler(true))
	hm.Handle("/livez", a.health.handler(false))
	mm := http.NewServeMux()
	mm.Handle("/metrics", promhttp.HandlerFor(a.metrics.reg, promhttp.HandlerOpts{}))
	mm.Handle("/healthz", a.health.handler(true))
	// kube-proxy's status port says its mode; tools and upstream's e2e
	// ("Networking should check kube-proxy urls") ask it.
	mm.HandleFunc("/proxyMode", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprint(w, a.cfg.Proxy.Mode)
	})
	if err := start(a.cfg.HealthzBindAddress, hm); err != nil {
		stop()
		return nil, err
	}
	if err := start(a.cfg.MetricsBindAddress, mm); err != nil {
		stop()
		return nil, err
	}
	return stop, nil
}
