package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/kdive/kdive/internal/model"
)

// HealthServer answers load balancers' health checks on the
// healthCheckNodePort of every externalTrafficPolicy: Local service, like
// kube-proxy: 200 while the node has local endpoints, 503 otherwise, with
// a JSON body naming the service and the count. A load balancer then sends
// traffic only to nodes that can serve it without a second hop.
type HealthServer struct {
	// Listen opens a listener (net.Listen in the node's namespace by
	// default); tests may replace it.
	Listen func(network, addr string) (net.Listener, error)

	mu      sync.Mutex
	servers map[int]*healthPort
}

type healthPort struct {
	srv *http.Server
	mu  sync.Mutex
	svc model.ServicePortName
	n   int
}

// healthResponse is kube-proxy's body.
type healthResponse struct {
	Service struct {
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
	} `json:"service"`
	LocalEndpoints      int  `json:"localEndpoints"`
	ServiceProxyHealthy bool `json:"serviceProxyHealthy"`
}

func (h *healthPort) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	h.mu.Lock()
	var resp healthResponse
	resp.Service.Namespace, resp.Service.Name = h.svc.Namespace, h.svc.Name
	resp.LocalEndpoints, resp.ServiceProxyHealthy = h.n, true
	h.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("X-Load-Balancing-Endpoint-Weight", strconv.Itoa(resp.LocalEndpoints))
	if resp.LocalEndpoints == 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	b, _ := json.MarshalIndent(resp, "", "\t")
	_, _ = w.Write(append(b, '\n'))
}

// Sync opens a health check port for every service that needs one, closes
// the ones no longer needed and updates the local endpoint counts. A port
// that cannot be opened is reported and retried on the next Sync; the
// others keep serving.
func (s *HealthServer) Sync(d *Desired) error {
	want := map[int]*Port{}
	for _, p := range d.Services {
		if p.ExternalPolicyLocal && p.HealthCheckNodePort > 0 {
			want[p.HealthCheckNodePort] = p
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.servers == nil {
		s.servers = map[int]*healthPort{}
	}
	for port, hp := range s.servers {
		if _, ok := want[port]; !ok {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_ = hp.srv.Shutdown(ctx)
			cancel()
			delete(s.servers, port)
		}
	}
	var errs []error
	for port, p := range want {
		hp, ok := s.servers[port]
		if !ok {
			listen := s.Listen
			if listen == nil {
				listen = net.Listen
			}
			ln, err := listen("tcp", ":"+strconv.Itoa(port))
			if err != nil {
				errs = append(errs, fmt.Errorf("health check port %d of %s: %w", port, p.Name, err))
				continue
			}
			hp = &healthPort{}
			hp.srv = &http.Server{Handler: hp, ReadHeaderTimeout: 5 * time.Second}
			go func() { _ = hp.srv.Serve(ln) }()
			s.servers[port] = hp
		}
		hp.mu.Lock()
		hp.svc, hp.n = p.Name, len(p.Local)
		hp.mu.Unlock()
	}
	return errors.Join(errs...)
}

// Close stops every health check port.
func (s *HealthServer) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for port, hp := range s.servers {
		_ = hp.srv.Close()
		delete(s.servers, port)
	}
}
