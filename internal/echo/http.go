package echo

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

// HTTP server limits. Requests are tiny; the timeouts only bound what a
// stuck or idle client can hold.
const (
	readHeaderTimeout = 10 * time.Second
	idleTimeout       = 2 * time.Minute
	// shutdownTimeout bounds the graceful part of shutdown; after it the
	// remaining connections are closed.
	shutdownTimeout = 2 * time.Second
)

// httpServer is one http.Server serving every TCP listener, plus a count of
// its connections so that shutdown can wait for their goroutines too
// (http.Server.Shutdown returns before they have all exited).
type httpServer struct {
	srv   *http.Server
	conns sync.WaitGroup
	log   *slog.Logger
}

func newHTTPServer(id Identity, log *slog.Logger) *httpServer {
	s := &httpServer{log: log}
	s.srv = &http.Server{
		Handler:           handler(id, log),
		ReadHeaderTimeout: readHeaderTimeout,
		IdleTimeout:       idleTimeout,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		ConnState: func(_ net.Conn, st http.ConnState) {
			// StateNew is reported by Serve before the connection's goroutine
			// starts, StateClosed by that goroutine as it ends. Nothing is
			// hijacked, so every connection ends in StateClosed.
			switch st {
			case http.StateNew:
				s.conns.Add(1)
			case http.StateClosed, http.StateHijacked:
				s.conns.Done()
			}
		},
	}
	return s
}

// serve serves ln until shutdown; it returns nil once the server is closed.
func (s *httpServer) serve(ln net.Listener) error {
	if err := s.srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// shutdown closes the listeners and idle connections, lets requests in flight
// finish for up to shutdownTimeout, then closes what is left.
func (s *httpServer) shutdown() {
	ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := s.srv.Shutdown(ctx); err != nil {
		s.log.Warn("graceful HTTP shutdown incomplete, closing connections", "err", err)
		_ = s.srv.Close() // only returns the listeners' Close errors
	}
}

// wait blocks until every connection goroutine has ended. Call it after
// shutdown and after every serve has returned (no new connections).
func (s *httpServer) wait() { s.conns.Wait() }

// maxRequestBody bounds what the server reads of a request body.
const maxRequestBody = 64 << 20

// handler answers every method and path with the Reply, except /healthz,
// which answers "ok". It is a plain HandlerFunc rather than a ServeMux
// because a mux redirects unclean paths ("//a", "/a/../b"), and any path must
// get the Reply.
func handler(id Identity, log *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			_, _ = io.WriteString(w, "ok")
			return
		}
		// Receive the whole request before answering: a client sending a
		// large body (an MTU test) must see it arrive, not a reset from a
		// server that closed with unread data.
		if _, err := io.Copy(io.Discard, io.LimitReader(r.Body, maxRequestBody)); err != nil {
			log.Debug("HTTP request body", "client", r.RemoteAddr, "err", err)
			return
		}
		var local net.IP
		if a, ok := r.Context().Value(http.LocalAddrContextKey).(*net.TCPAddr); ok {
			local = a.IP
		}
		body := encode(id.reply(r.RemoteAddr, local))
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		if _, err := w.Write(body); err != nil {
			log.Debug("HTTP reply failed", "client", r.RemoteAddr, "err", err)
			return
		}
		log.Debug("HTTP reply", "client", r.RemoteAddr, "method", r.Method, "path", r.URL.Path)
	})
}
