package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"slices"
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
//
// Each port listens on every address of HealthCheckIPs (the node IPs
// within nodePortAddresses, or every address without them), one listener
// per address, following the node's IPs and the configuration from one
// Sync to the next.
type HealthServer struct {
	// Listen opens a listener: net.Listen by default, in the caller's
	// namespace; the agent listens in the node's, tests where they like.
	Listen func(network, addr string) (net.Listener, error)

	mu      sync.Mutex
	servers map[int]*healthPort
}

type healthPort struct {
	// listeners are the port's servers by address (only Sync and Close
	// touch them, under HealthServer.mu).
	listeners map[netip.Addr]*http.Server
	mu        sync.Mutex
	svc       model.ServicePortName
	n         int
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

// Sync opens a health check port for every service that needs one, on
// every address of HealthCheckIPs, closes the listeners no longer needed
// (a port whose service went, an address that went) and updates the
// local endpoint counts. A listener that stays is not reopened. One that
// cannot be opened is reported and retried on the next Sync; the others
// keep serving.
func (s *HealthServer) Sync(d *Desired) error {
	want := map[int]*Port{}
	for _, p := range d.Services {
		if p.ExternalPolicyLocal && p.HealthCheckNodePort > 0 {
			want[p.HealthCheckNodePort] = p
		}
	}
	addrs := HealthCheckIPs(d.Config, d.Node)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.servers == nil {
		s.servers = map[int]*healthPort{}
	}
	for port, hp := range s.servers {
		if _, ok := want[port]; !ok {
			hp.stop(nil)
			delete(s.servers, port)
		}
	}
	var errs []error
	for _, port := range slices.Sorted(maps.Keys(want)) {
		p := want[port]
		hp, ok := s.servers[port]
		if !ok {
			hp = &healthPort{listeners: map[netip.Addr]*http.Server{}}
			s.servers[port] = hp
		}
		hp.mu.Lock()
		// Only ready endpoints count, as kube-proxy's LocalReadyEndpoints:
		// a node whose local endpoints are all terminating still serves
		// them (p.Local falls back to them) but fails its health check,
		// so that the load balancer drains it.
		n := 0
		for _, e := range p.Local {
			if e.Ready {
				n++
			}
		}
		hp.svc, hp.n = p.Name, n
		hp.mu.Unlock()
		// Close before opening: a listener on 0.0.0.0 holds the port on
		// the addresses that replace it.
		hp.stop(addrs)
		for _, addr := range addrs {
			if _, ok := hp.listeners[addr]; ok {
				continue
			}
			if err := s.listen(hp, netip.AddrPortFrom(addr, uint16(port))); err != nil {
				errs = append(errs, fmt.Errorf("health check port %d of %s: %w", port, p.Name, err))
			}
		}
	}
	return errors.Join(errs...)
}

// listen opens hp's listener on ap.
func (s *HealthServer) listen(hp *healthPort, ap netip.AddrPort) error {
	listen := s.Listen
	if listen == nil {
		listen = net.Listen
	}
	ln, err := listen("tcp", ap.String())
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: hp, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	hp.listeners[ap.Addr()] = srv
	return nil
}

// stop closes hp's listeners on addresses other than keep (all of them
// without keep), letting requests in flight finish for up to a second.
func (hp *healthPort) stop(keep []netip.Addr) {
	for addr, srv := range hp.listeners {
		if slices.Contains(keep, addr) {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = srv.Shutdown(ctx)
		cancel()
		delete(hp.listeners, addr)
	}
}

// Close stops every health check port.
func (s *HealthServer) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for port, hp := range s.servers {
		for _, srv := range hp.listeners {
			_ = srv.Close()
		}
		delete(s.servers, port)
	}
}
