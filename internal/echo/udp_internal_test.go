package echo

import (
	"encoding/json"
	"log/slog"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A server bound to a wildcard address with "udp" gets a dual-stack AF_INET6
// socket, which reports IPv4 destinations through IPV6_PKTINFO as
// IPv4-mapped addresses. To exercise that path with traffic only to
// 127.0.0.1, this test builds such a socket bound to ::ffff:127.0.0.1 (which
// net.ListenPacket cannot: it would open an AF_INET socket).
func TestUDPDualStackSocketFillsPodIP(t *testing.T) {
	conn := dualStackLoopback(t)
	if fam, err := socketFamily(conn); err != nil || fam != unix.AF_INET6 {
		t.Fatalf("socketFamily = %d, %v; want AF_INET6", fam, err)
	}
	id := Identity{Pod: "dns-0", Namespace: "kube-system", Node: "node-b"}
	s, err := newUDPServer(Listen{Proto: "udp", Addr: conn.LocalAddr().String()}, conn, id, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.serve() }()

	port := conn.LocalAddr().(*net.UDPAddr).Port
	client, err := net.DialUDP("udp", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	if err := client.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Write([]byte("q")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1024)
	n, err := client.Read(buf)
	if err != nil {
		t.Fatalf("read reply: %v", err)
	}
	var got Reply
	if err := json.Unmarshal(buf[:n], &got); err != nil {
		t.Fatalf("decode %q: %v", buf[:n], err)
	}
	want := Reply{Identity: id, Client: client.LocalAddr().String()}
	want.PodIP = "127.0.0.1"
	if got != want {
		t.Errorf("reply %+v, want %+v", got, want)
	}

	if err := s.close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Errorf("serve after close = %v, want nil", err)
	}
}

// dualStackLoopback returns a UDP socket of family AF_INET6 with IPV6_V6ONLY
// off, bound to ::ffff:127.0.0.1 on a free port.
func dualStackLoopback(t *testing.T) *net.UDPConn {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Skipf("no IPv6 sockets: %v", err)
	}
	f := os.NewFile(uintptr(fd), "udp6-dualstack")
	defer f.Close() // FilePacketConn dups the descriptor
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err != nil {
		t.Fatalf("clear IPV6_V6ONLY: %v", err)
	}
	sa := &unix.SockaddrInet6{Addr: [16]byte{10: 0xff, 11: 0xff, 12: 127, 15: 1}}
	if err := unix.Bind(fd, sa); err != nil {
		t.Fatalf("bind [::ffff:127.0.0.1]:0: %v", err)
	}
	pc, err := net.FilePacketConn(f)
	if err != nil {
		t.Fatal(err)
	}
	conn, ok := pc.(*net.UDPConn)
	if !ok {
		t.Fatalf("FilePacketConn gave %T", pc)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}
