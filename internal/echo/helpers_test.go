package echo_test

// Address plan: every test binds 127.0.0.1 (port 0 unless a test needs a
// known port) and sends traffic only to 127.0.0.1.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/kdive/kdive/internal/echo"
	"github.com/kdive/kdive/internal/kernel/ktest"
)

const ioTimeout = 5 * time.Second

// server is an echo.Run running for one test.
type server struct {
	addrs    []net.Addr
	cancel   context.CancelFunc
	done     chan error
	stopOnce sync.Once
	stopErr  error
}

// start runs echo.Run with opts and waits until it is ready. The server is
// stopped at the end of the test if the test has not stopped it.
func start(t *testing.T, opts echo.Options) *server {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan []net.Addr, 1)
	opts.Ready = func(addrs []net.Addr) { ready <- addrs }
	s := &server{cancel: cancel, done: make(chan error, 1)}
	go func() { s.done <- echo.Run(ctx, opts) }()
	select {
	case s.addrs = <-ready:
	case err := <-s.done:
		cancel()
		t.Fatalf("Run returned before it was ready: %v", err)
	case <-time.After(ioTimeout):
		cancel()
		t.Fatal("Run was not ready in time")
	}
	t.Cleanup(func() {
		if err := s.stop(); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return s
}

// stop cancels Run and returns its result. It may be called more than once.
func (s *server) stop() error {
	s.stopOnce.Do(func() {
		s.cancel()
		select {
		case s.stopErr = <-s.done:
		case <-time.After(ioTimeout):
			s.stopErr = context.DeadlineExceeded
		}
	})
	return s.stopErr
}

// httpDo sends one request on a fresh connection and returns the response,
// its body, and the connection's local address (what the server should
// report as client).
func httpDo(t *testing.T, addr net.Addr, method, path string) (*http.Response, []byte, net.Addr) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr.String(), ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(ioTimeout)); err != nil {
		t.Fatal(err)
	}
	resp, body := httpRoundTrip(t, conn, method, path, true)
	return resp, body, conn.LocalAddr()
}

// httpRoundTrip writes a request on conn and reads the response.
func httpRoundTrip(t *testing.T, conn net.Conn, method, path string, closeConn bool) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+conn.RemoteAddr().String()+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Close = closeConn
	if err := req.Write(conn); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

// udpDo sends payload to addr from a connected socket (so only a reply from
// addr is accepted) and returns the reply and the socket's local address.
func udpDo(t *testing.T, addr net.Addr, payload []byte) ([]byte, net.Addr) {
	t.Helper()
	conn, err := net.DialUDP("udp", nil, addr.(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(ioTimeout)); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write(payload); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64<<10)
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatalf("read UDP reply: %v", err)
	}
	return buf[:n], conn.LocalAddr()
}

// decodeReply parses a reply body: one JSON object and a trailing newline,
// nothing else.
func decodeReply(t *testing.T, body []byte) echo.Reply {
	t.Helper()
	if len(body) == 0 || body[len(body)-1] != '\n' {
		t.Fatalf("reply %q does not end in a newline", body)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	var r echo.Reply
	if err := dec.Decode(&r); err != nil {
		t.Fatalf("decode reply %q: %v", body, err)
	}
	if dec.More() {
		t.Fatalf("reply %q holds more than one JSON value", body)
	}
	return r
}

// waitGoroutines waits until no more than n goroutines are left, and fails
// with a dump of all goroutines if that takes too long.
func waitGoroutines(t *testing.T, n int) {
	t.Helper()
	waited := false
	defer func() {
		if !waited { // Eventually failed the test: show what is left
			buf := make([]byte, 1<<20)
			t.Logf("goroutines left:\n%s", buf[:runtime.Stack(buf, true)])
		}
	}()
	ktest.Eventually(t, ioTimeout, fmt.Sprintf("at most %d goroutines", n), func() error {
		if g := runtime.NumGoroutine(); g > n {
			return fmt.Errorf("%d goroutines left", g)
		}
		return nil
	})
	waited = true
}

func loopback(proto string) echo.Listen {
	return echo.Listen{Proto: proto, Addr: "127.0.0.1:0"}
}
