package echo

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
)

// Options configure Run.
type Options struct {
	// Identity fills the Reply. An empty PodIP is filled per request from
	// the local address the request arrived on (see the package comment).
	Identity
	// Listen lists the sockets to serve; at least one. Port 0 picks a free
	// port (see Ready).
	Listen []Listen
	// Logger receives the server's records; nil discards them.
	Logger *slog.Logger
	// Ready, if set, is called once, after every listener is bound and
	// serving, with the bound addresses in the order of Listen (a
	// *net.TCPAddr or *net.UDPAddr each). It runs on Run's goroutine and
	// should return promptly. It is not called when binding fails.
	Ready func(addrs []net.Addr)
}

// Run binds every listener, serves until ctx is cancelled, shuts down and
// returns nil. If a listener cannot be bound, Run closes the ones already
// bound and returns an error naming it. If a listener fails while serving,
// Run shuts the others down and returns that error. When Run returns, every
// socket is closed and every goroutine it started has ended.
func Run(ctx context.Context, opts Options) error {
	if len(opts.Listen) == 0 {
		return errors.New("echo: no listeners")
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	hs := newHTTPServer(opts.Identity, log)
	socks, err := bindAll(ctx, opts, log)
	if err != nil {
		return err
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	fail := func(s socket, err error) {
		mu.Lock()
		errs = append(errs, fmt.Errorf("echo: serve %s: %w", s.spec, err))
		mu.Unlock()
		cancel()
	}
	addrs := make([]net.Addr, len(socks))
	for i, s := range socks {
		addrs[i] = s.addr()
		switch {
		case s.ln != nil:
			wg.Go(func() {
				if err := hs.serve(s.ln); err != nil {
					fail(s, err)
				}
			})
		case s.udp != nil:
			wg.Go(func() {
				if err := s.udp.serve(); err != nil {
					fail(s, err)
				}
			})
		}
		log.Info("listening", "listen", s.spec.String(), "addr", addrs[i].String())
	}
	if opts.Ready != nil {
		opts.Ready(addrs)
	}

	<-ctx.Done()
	log.Info("shutting down")
	hs.shutdown() // closes the TCP listeners; each serve then returns
	for _, s := range socks {
		if s.udp != nil {
			_ = s.udp.close() // ends its serve; nothing useful to do with an error
		}
	}
	wg.Wait()
	hs.wait()
	return errors.Join(errs...)
}

// socket is one bound listener: ln for tcp, udp for udp.
type socket struct {
	spec Listen
	ln   net.Listener
	udp  *udpServer
}

func (s socket) addr() net.Addr {
	if s.ln != nil {
		return s.ln.Addr()
	}
	return s.udp.conn.LocalAddr()
}

func (s socket) close() {
	if s.ln != nil {
		_ = s.ln.Close()
	} else {
		_ = s.udp.close()
	}
}

// bindAll binds every listener in order. On the first failure it closes the
// ones already bound and returns an error naming the failed one.
func bindAll(ctx context.Context, opts Options, log *slog.Logger) ([]socket, error) {
	socks := make([]socket, 0, len(opts.Listen))
	for _, l := range opts.Listen {
		s, err := bind(ctx, l, opts.Identity, log)
		if err != nil {
			for _, b := range socks {
				b.close()
			}
			return nil, fmt.Errorf("echo: bind %s: %w", l, err)
		}
		socks = append(socks, s)
	}
	return socks, nil
}

func bind(ctx context.Context, l Listen, id Identity, log *slog.Logger) (socket, error) {
	var lc net.ListenConfig
	switch l.Proto {
	case "tcp":
		ln, err := lc.Listen(ctx, "tcp", l.Addr)
		if err != nil {
			return socket{}, err
		}
		return socket{spec: l, ln: ln}, nil
	case "udp":
		pc, err := lc.ListenPacket(ctx, "udp", l.Addr)
		if err != nil {
			return socket{}, err
		}
		conn, ok := pc.(*net.UDPConn)
		if !ok { // cannot happen for "udp"; keeps the type assertion honest
			_ = pc.Close()
			return socket{}, fmt.Errorf("unexpected packet conn %T", pc)
		}
		u, err := newUDPServer(l, conn, id, log)
		if err != nil {
			_ = conn.Close()
			return socket{}, err
		}
		return socket{spec: l, udp: u}, nil
	default:
		return socket{}, fmt.Errorf("protocol %q is not tcp or udp", l.Proto)
	}
}
