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

// health is what /healthz and /livez report, kube-proxy style: healthy
// once a sync succeeded, as long as no change (or failed sync) has been
// waiting to be programmed for more than two sync periods; the body names
// the last error.
type health struct {
	mu          sync.Mutex
	period      time.Duration
	lastSuccess time.Time
	pendingFrom time.Time // first unprogrammed change; zero when none
	lastError   string
}

func (h *health) changed() {
	h.mu.Lock()
	if h.pendingFrom.IsZero() {
		h.pendingFrom = time.Now()
	}
	h.mu.Unlock()
}

func (h *health) synced(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err != nil {
		h.lastError = err.Error()
		if h.pendingFrom.IsZero() {
			h.pendingFrom = time.Now()
		}
		return
	}
	h.lastSuccess, h.pendingFrom, h.lastError = time.Now(), time.Time{}, ""
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
		ok := !h.lastSuccess.IsZero() && (h.pendingFrom.IsZero() || now.Sub(h.pendingFrom) < 2*h.period)
		r := healthReply{LastUpdated: h.lastSuccess, CurrentTime: now, LastError: h.lastError}
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
