package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// health is what /healthz and /livez report, kube-proxy style, over the
// agent's parts: healthy once every part synced (or waits for the
// cluster: a pod network without spec.podCIDR is no reason to fail the
// proxy's health) and the whole agent synced at least once, as long as no
// part has had a change (or failed sync) waiting to be programmed for more
// than two sync periods. The body is kube-proxy's and says nothing more:
// the health port listens on every address, and the parts' errors name
// services, chains and kernel messages, so they go to the log, the
// metrics (kdive_sync_errors_total) and /status on the node-local metrics
// port instead.
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

// state is what the handlers report: healthy or not.
func (h *health) state(now time.Time) (ok bool) {
	ok = !h.lastSuccess.IsZero()
	for _, p := range h.parts {
		if !p.ready || !p.pendingFrom.IsZero() && now.Sub(p.pendingFrom) >= 2*h.period {
			ok = false
		}
	}
	return ok
}

// healthReply is kube-proxy's /healthz and /livez body, field for field.
type healthReply struct {
	LastUpdated  time.Time `json:"lastUpdated"`
	CurrentTime  time.Time `json:"currentTime"`
	NodeEligible *bool     `json:"nodeEligible,omitempty"`
}

// live is /livez's verdict, kube-proxy's: alive unless a part has had a
// change (or failed sync) waiting for more than two sync periods. An agent
// that has not synced yet with nothing waiting, starting or unable to
// reach the API server, is alive: the kubelet restarting it would change
// nothing but, in its back-off, delay the first sync once the API server
// answers again (minutes after an outage of two).
func (h *health) live(now time.Time) bool {
	for _, p := range h.parts {
		if !p.pendingFrom.IsZero() && now.Sub(p.pendingFrom) >= 2*h.period {
			return false
		}
	}
	return true
}

// handler serves /healthz (and /livez without withNode, but for its
// verdict: livez).
func (h *health) handler(withNode bool) http.HandlerFunc { return h.reply(withNode, h.state) }

// livez serves /livez.
func (h *health) livez() http.HandlerFunc { return h.reply(false, h.live) }

func (h *health) reply(withNode bool, verdict func(time.Time) bool) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		h.mu.Lock()
		now := time.Now()
		ok := verdict(now)
		r := healthReply{LastUpdated: h.lastSuccess, CurrentTime: now}
		h.mu.Unlock()
		if withNode {
			eligible := true
			r.NodeEligible = &eligible
		}
		writeJSON(w, ok, r)
	}
}

// Status is the agent's /status on its metrics port (127.0.0.1:10249 by
// default, so the node alone reads it): the health /healthz reports, and
// for each part why.
type Status struct {
	Healthy     bool                  `json:"healthy"`
	LastUpdated time.Time             `json:"lastUpdated"`
	CurrentTime time.Time             `json:"currentTime"`
	Parts       map[string]PartStatus `json:"parts"`
}

// PartStatus is one part's (proxy, podnet) state.
type PartStatus struct {
	// Ready: synced at least once, or waiting for the cluster.
	Ready bool `json:"ready"`
	// PendingSince is the first change (or failed sync) not yet
	// programmed; zero when none.
	PendingSince time.Time `json:"pendingSince,omitzero"`
	// LastError is the last sync's error; empty once a sync succeeds.
	LastError string `json:"lastError,omitempty"`
}

func (h *health) statusHandler(w http.ResponseWriter, _ *http.Request) {
	h.mu.Lock()
	now := time.Now()
	st := Status{Healthy: h.state(now), LastUpdated: h.lastSuccess, CurrentTime: now, Parts: map[string]PartStatus{}}
	for name, p := range h.parts {
		st.Parts[name] = PartStatus{Ready: p.ready, PendingSince: p.pendingFrom, LastError: p.lastError}
	}
	h.mu.Unlock()
	writeJSON(w, st.Healthy, st)
}

// writeJSON answers v, with 503 unless ok.
func writeJSON(w http.ResponseWriter, ok bool, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if !ok {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_ = json.NewEncoder(w).Encode(v)
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
	hm.Handle("/livez", a.health.livez())
	mm := http.NewServeMux()
	mm.Handle("/metrics", promhttp.HandlerFor(a.metrics.reg, promhttp.HandlerOpts{}))
	mm.Handle("/healthz", a.health.handler(true))
	mm.HandleFunc("/status", a.health.statusHandler)
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
