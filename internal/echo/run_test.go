package echo_test

import (
	"context"
	"errors"
	"io"
	"net"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kdive/kdive/internal/echo"
)

var testID = echo.Identity{Pod: "web-1", Namespace: "shop", Node: "node-a", PodIP: "10.0.7.3"}

func TestHTTP(t *testing.T) {
	noIP := testID
	noIP.PodIP = ""
	tests := []struct {
		name       string
		id         echo.Identity
		method     string
		path       string
		wantPodIP  string
		wantStatus int
	}{
		{name: "GET root", id: testID, method: "GET", path: "/", wantPodIP: "10.0.7.3"},
		{name: "POST any path", id: testID, method: "POST", path: "/api/v1/things", wantPodIP: "10.0.7.3"},
		{name: "unclean path not redirected", id: testID, method: "DELETE", path: "//a/../b?x=1", wantPodIP: "10.0.7.3"},
		{name: "podIP from local address", id: noIP, method: "GET", path: "/", wantPodIP: "127.0.0.1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := start(t, echo.Options{Identity: tt.id, Listen: []echo.Listen{loopback("tcp")}})
			resp, body, local := httpDo(t, s.addrs[0], tt.method, tt.path)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d, want 200 (body %q)", resp.StatusCode, body)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q, want application/json", ct)
			}
			got := decodeReply(t, body)
			want := echo.Reply{Identity: tt.id, Client: local.String()}
			want.PodIP = tt.wantPodIP
			if got != want {
				t.Errorf("reply %+v, want %+v", got, want)
			}
		})
	}
}

func TestHTTPHealthz(t *testing.T) {
	s := start(t, echo.Options{Identity: testID, Listen: []echo.Listen{loopback("tcp")}})
	resp, body, _ := httpDo(t, s.addrs[0], "GET", "/healthz")
	if resp.StatusCode != 200 || string(body) != "ok" {
		t.Errorf("GET /healthz = %d %q, want 200 \"ok\"", resp.StatusCode, body)
	}
}

func TestUDP(t *testing.T) {
	noIP := testID
	noIP.PodIP = ""
	tests := []struct {
		name      string
		id        echo.Identity
		payload   []byte
		wantPodIP string
	}{
		{name: "payload ignored", id: testID, payload: []byte("hello"), wantPodIP: "10.0.7.3"},
		{name: "empty datagram", id: testID, payload: nil, wantPodIP: "10.0.7.3"},
		{name: "largest datagram", id: testID, payload: make([]byte, 65507), wantPodIP: "10.0.7.3"},
		{name: "podIP from destination", id: noIP, payload: []byte("x"), wantPodIP: "127.0.0.1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := start(t, echo.Options{Identity: tt.id, Listen: []echo.Listen{loopback("udp")}})
			body, local := udpDo(t, s.addrs[0], tt.payload)
			got := decodeReply(t, body)
			want := echo.Reply{Identity: tt.id, Client: local.String()}
			want.PodIP = tt.wantPodIP
			if got != want {
				t.Errorf("reply %+v, want %+v", got, want)
			}
		})
	}
}

func TestSeveralListeners(t *testing.T) {
	s := start(t, echo.Options{
		Identity: testID,
		Listen:   []echo.Listen{loopback("tcp"), loopback("udp"), loopback("tcp")},
	})
	if len(s.addrs) != 3 {
		t.Fatalf("Ready got %d addresses, want 3: %v", len(s.addrs), s.addrs)
	}
	for i, a := range s.addrs {
		var body []byte
		var local net.Addr
		switch a.(type) {
		case *net.TCPAddr:
			if i == 1 {
				t.Fatalf("address %d is %v, want the UDP listener's", i, a)
			}
			_, body, local = httpDo(t, a, "GET", "/")
		case *net.UDPAddr:
			if i != 1 {
				t.Fatalf("address %d is %v, want a TCP listener's", i, a)
			}
			body, local = udpDo(t, a, []byte("x"))
		default:
			t.Fatalf("address %d has type %T", i, a)
		}
		if got, want := decodeReply(t, body), (echo.Reply{Identity: testID, Client: local.String()}); got != want {
			t.Errorf("listener %d (%v): reply %+v, want %+v", i, a, got, want)
		}
	}
	if s.addrs[0].String() == s.addrs[2].String() {
		t.Errorf("both TCP listeners on %v", s.addrs[0])
	}
}

func TestBindFailure(t *testing.T) {
	for _, proto := range []string{"tcp", "udp"} {
		t.Run(proto, func(t *testing.T) {
			busy := occupy(t, proto)
			before := runtime.NumGoroutine()
			// The first two are bound before the busy one fails; Run must close them.
			free := []echo.Listen{
				{Proto: "tcp", Addr: freeAddr(t, "tcp")},
				{Proto: "udp", Addr: freeAddr(t, "udp")},
			}
			bad := echo.Listen{Proto: proto, Addr: busy}
			err := echo.Run(context.Background(), echo.Options{
				Identity: testID,
				Listen:   append(free, bad),
				Ready:    func([]net.Addr) { t.Error("Ready called although a bind failed") },
			})
			if err == nil {
				t.Fatal("Run succeeded on a port in use")
			}
			if !strings.Contains(err.Error(), bad.String()) || !errors.Is(err, syscall.EADDRINUSE) {
				t.Errorf("Run error %q: want it to name %s and wrap EADDRINUSE", err, bad)
			}
			for _, l := range free {
				rebind(t, l)
			}
			waitGoroutines(t, before)
		})
	}
}

func TestRunStopsCleanly(t *testing.T) {
	before := runtime.NumGoroutine()
	s := start(t, echo.Options{Identity: testID, Listen: []echo.Listen{loopback("tcp"), loopback("udp")}})

	// An idle keep-alive connection must not hold up shutdown.
	conn, err := net.DialTimeout("tcp", s.addrs[0].String(), ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(ioTimeout)); err != nil {
		t.Fatal(err)
	}
	if resp, _ := httpRoundTrip(t, conn, "GET", "/", false); resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	udpDo(t, s.addrs[1], []byte("x"))

	begin := time.Now()
	if err := s.stop(); err != nil {
		t.Fatalf("Run returned %v after cancel, want nil", err)
	}
	if d := time.Since(begin); d > time.Second {
		t.Errorf("Run took %v to stop with only an idle connection", d)
	}
	waitGoroutines(t, before)
	rebind(t, echo.Listen{Proto: "tcp", Addr: s.addrs[0].String()})
	rebind(t, echo.Listen{Proto: "udp", Addr: s.addrs[1].String()})
}

// A client that connects and says nothing keeps its connection "new", which
// Shutdown waits for; Run must give up after its bound and still return nil
// with every goroutine gone.
func TestRunShutdownBounded(t *testing.T) {
	before := runtime.NumGoroutine()
	s := start(t, echo.Options{Identity: testID, Listen: []echo.Listen{loopback("tcp")}})
	conn, err := net.DialTimeout("tcp", s.addrs[0].String(), ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// The server accepts in order, so once a later connection has been
	// answered the silent one has been accepted too.
	httpDo(t, s.addrs[0], "GET", "/healthz")

	begin := time.Now()
	if err := s.stop(); err != nil {
		t.Fatalf("Run returned %v, want nil", err)
	}
	if d := time.Since(begin); d > 4*time.Second {
		t.Errorf("Run took %v to stop, want about the 2s shutdown bound", d)
	}
	waitGoroutines(t, before)
}

func TestRunAlreadyCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	ready := false
	err := echo.Run(ctx, echo.Options{Listen: []echo.Listen{loopback("tcp"), loopback("udp")}, Ready: func([]net.Addr) { ready = true }})
	if err != nil || !ready {
		t.Errorf("Run on a cancelled context = %v (ready %v), want nil after binding", err, ready)
	}
}

func TestRunBadOptions(t *testing.T) {
	tests := []struct {
		name    string
		listen  []echo.Listen
		wantErr string
	}{
		{name: "no listeners", wantErr: "echo: no listeners"},
		{name: "bad protocol", listen: []echo.Listen{{Proto: "sctp", Addr: "127.0.0.1:0"}}, wantErr: `echo: bind sctp:127.0.0.1:0: protocol "sctp" is not tcp or udp`},
		{name: "bad address", listen: []echo.Listen{{Proto: "tcp", Addr: "127.0.0.1"}}, wantErr: "echo: bind tcp:127.0.0.1: "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := echo.Run(context.Background(), echo.Options{Listen: tt.listen})
			if err == nil || !strings.HasPrefix(err.Error(), tt.wantErr) {
				t.Errorf("Run = %v, want an error starting with %q", err, tt.wantErr)
			}
		})
	}
}

// occupy binds a 127.0.0.1 port for the rest of the test and returns its
// address.
func occupy(t *testing.T, proto string) string {
	t.Helper()
	c, addr := bindLoopback(t, proto)
	t.Cleanup(func() { _ = c.Close() })
	return addr
}

// freeAddr returns a 127.0.0.1 address whose port was free a moment ago.
func freeAddr(t *testing.T, proto string) string {
	t.Helper()
	c, addr := bindLoopback(t, proto)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

func bindLoopback(t *testing.T, proto string) (io.Closer, string) {
	t.Helper()
	if proto == "tcp" {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		return ln, ln.Addr().String()
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return pc, pc.LocalAddr().String()
}

// rebind checks that l's address is free again by binding it.
func rebind(t *testing.T, l echo.Listen) {
	t.Helper()
	var err error
	if l.Proto == "tcp" {
		var ln net.Listener
		if ln, err = net.Listen("tcp", l.Addr); err == nil {
			err = ln.Close()
		}
	} else {
		var pc net.PacketConn
		if pc, err = net.ListenPacket("udp", l.Addr); err == nil {
			err = pc.Close()
		}
	}
	if err != nil {
		t.Errorf("%s still bound after Run returned: %v", l, err)
	}
}
