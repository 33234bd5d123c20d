package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kdive/kdive/internal/kernel"
)

// The traffic of a bench run: a small TCP server in one pod and the
// clients in another. A connection starts with one byte saying what it is:
//
//	'E' echo: the server answers every msgSize-byte request with msgSize
//	    bytes until the client closes (request/response latency);
//	'S' sink: the server reads until the client half-closes, then answers
//	    with the byte count, 8 bytes big-endian (throughput).
const (
	opEcho  = 'E'
	opSink  = 'S'
	msgSize = 64
	// ioTimeout bounds every connection's wait, so a broken path fails
	// the run instead of hanging it.
	ioTimeout = 5 * time.Second
)

// server is the TCP server of a bench run, counting what it answered.
type server struct {
	ln     net.Listener
	echoes atomic.Int64 // echo connections accepted
	sinks  atomic.Int64 // sink connections accepted
	mu     sync.Mutex
	conns  map[net.Conn]bool
	wg     sync.WaitGroup
}

// startServer listens on addr inside ns; the listening socket stays in ns,
// so accepting and serving run on ordinary goroutines.
func startServer(ns *kernel.NetNS, addr netip.AddrPort) (*server, error) {
	s := &server{conns: map[net.Conn]bool{}}
	err := ns.Do(func() (err error) {
		s.ln, err = net.Listen("tcp4", addr.String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("bench server on %s in %s: %w", addr, ns, err)
	}
	s.wg.Add(1)
	go s.accept()
	return s, nil
}

func (s *server) accept() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.conns[c] = true
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.serve(c)
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
			c.Close()
		}()
	}
}

func (s *server) serve(c net.Conn) {
	buf := make([]byte, 256<<10)
	if _, err := io.ReadFull(c, buf[:1]); err != nil {
		return
	}
	switch buf[0] {
	case opEcho:
		s.echoes.Add(1)
		for {
			if _, err := io.ReadFull(c, buf[:msgSize]); err != nil {
				return
			}
			if _, err := c.Write(buf[:msgSize]); err != nil {
				return
			}
		}
	case opSink:
		s.sinks.Add(1)
		var total uint64
		for {
			n, err := c.Read(buf)
			total += uint64(n)
			if err != nil {
				break
			}
		}
		_, _ = c.Write(binary.BigEndian.AppendUint64(nil, total))
	}
}

// Close stops the server and its connections and waits for them.
func (s *server) Close() error {
	err := s.ln.Close()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return err
}

// ask sends one request on an echo connection and waits for the answer.
func ask(c net.Conn, req, resp []byte) error {
	if _, err := c.Write(req); err != nil {
		return err
	}
	_, err := io.ReadFull(c, resp)
	return err
}

// firstPackets opens up to n new connections from ns to addr, one after
// the other, within limit, each with one request/response, and returns
// how long each took: the connect (timed inside the namespace) plus the
// exchange. It is the latency a packet that starts a connection sees,
// service lookup and NAT setup included.
func firstPackets(ctx context.Context, ns *kernel.NetNS, addr string, n int, limit time.Duration) ([]time.Duration, error) {
	req := make([]byte, 1+msgSize)
	req[0] = opEcho
	resp := make([]byte, msgSize)
	var out []time.Duration
	end := time.Now().Add(limit)
	for len(out) < n && time.Now().Before(end) {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		c, took, err := ns.DialTimed(ctx, "tcp4", addr)
		if err != nil {
			return nil, fmt.Errorf("connect from %s to %s: %w", ns, addr, err)
		}
		_ = c.SetDeadline(time.Now().Add(ioTimeout))
		start := time.Now()
		err = ask(c, req, resp)
		took += time.Since(start)
		c.Close()
		if err != nil {
			return nil, fmt.Errorf("request from %s to %s: %w", ns, addr, err)
		}
		out = append(out, took)
	}
	return out, nil
}

// roundTrips sends up to n requests within limit on one connection from ns
// to addr and returns each round trip's time.
func roundTrips(ctx context.Context, ns *kernel.NetNS, addr string, n int, limit time.Duration) ([]time.Duration, error) {
	c, err := ns.DialContext(ctx, "tcp4", addr)
	if err != nil {
		return nil, fmt.Errorf("connect from %s to %s: %w", ns, addr, err)
	}
	defer c.Close()
	req, resp := make([]byte, msgSize), make([]byte, msgSize)
	if _, err := c.Write([]byte{opEcho}); err != nil {
		return nil, fmt.Errorf("request from %s to %s: %w", ns, addr, err)
	}
	var out []time.Duration
	end := time.Now().Add(limit)
	for len(out) < n && time.Now().Before(end) {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		_ = c.SetDeadline(time.Now().Add(ioTimeout))
		start := time.Now()
		if err := ask(c, req, resp); err != nil {
			return nil, fmt.Errorf("request from %s to %s: %w", ns, addr, err)
		}
		out = append(out, time.Since(start))
	}
	return out, nil
}

// throughput sends one TCP stream from ns to addr for d and returns the
// bits per second the server received, over the time until it confirmed
// the count.
func throughput(ctx context.Context, ns *kernel.NetNS, addr string, d time.Duration) (float64, error) {
	c, err := ns.DialContext(ctx, "tcp4", addr)
	if err != nil {
		return 0, fmt.Errorf("connect from %s to %s: %w", ns, addr, err)
	}
	defer c.Close()
	fail := func(err error) (float64, error) {
		return 0, fmt.Errorf("stream from %s to %s: %w", ns, addr, err)
	}
	buf := make([]byte, 128<<10)
	buf[0] = opSink
	start := time.Now()
	for time.Since(start) < d {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		_ = c.SetDeadline(time.Now().Add(ioTimeout))
		if _, err := c.Write(buf); err != nil {
			return fail(err)
		}
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return fail(errors.New("not a TCP connection"))
	}
	if err := tc.CloseWrite(); err != nil {
		return fail(err)
	}
	var count [8]byte
	if _, err := io.ReadFull(c, count[:]); err != nil {
		return fail(err)
	}
	elapsed := time.Since(start).Seconds()
	bytes := binary.BigEndian.Uint64(count[:])
	if bytes == 0 {
		return fail(errors.New("the server received nothing"))
	}
	return float64(bytes-1) * 8 / elapsed, nil // the op byte is no payload
}

// latency is a distribution's summary, in seconds.
type latency struct {
	P50, P90, P99 float64
	Samples       int
}

// summarize takes nearest-rank percentiles.
func summarize(ds []time.Duration) latency {
	if len(ds) == 0 {
		return latency{P50: math.NaN(), P90: math.NaN(), P99: math.NaN()}
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	pct := func(p float64) float64 {
		i := int(math.Ceil(p*float64(len(s)))) - 1
		return s[max(i, 0)].Seconds()
	}
	return latency{P50: pct(0.50), P90: pct(0.90), P99: pct(0.99), Samples: len(s)}
}

// BitRate formats bits per second for tables: "9.41 Gbit/s".
func BitRate(bps float64) string {
	switch {
	case math.IsNaN(bps) || bps <= 0:
		return "-"
	case bps >= 1e9:
		return fmt.Sprintf("%.2f Gbit/s", bps/1e9)
	case bps >= 1e6:
		return fmt.Sprintf("%.1f Mbit/s", bps/1e6)
	default:
		return fmt.Sprintf("%.0f kbit/s", bps/1e3)
	}
}

// throughputPair measures one stream from ns to a and one to b, d each,
// in halves ordered a b b a, so that a machine getting busier or quieter
// during the run weighs on both alike; each result is the mean of its
// halves.
func throughputPair(ctx context.Context, ns *kernel.NetNS, a, b string, d time.Duration) (bpsA, bpsB float64, err error) {
	for _, addr := range []string{a, b, b, a} {
		bps, err := throughput(ctx, ns, addr, d/2)
		if err != nil {
			return 0, 0, err
		}
		if addr == a {
			bpsA += bps / 2
		} else {
			bpsB += bps / 2
		}
	}
	return bpsA, bpsB, nil
}
