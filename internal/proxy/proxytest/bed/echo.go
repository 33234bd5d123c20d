package bed

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kdive/kdive/internal/kernel"
)

// An Answer is what an echo server says to each line: the address the
// connection reached it on (the endpoint, or a sink's own destination) and
// the client address it saw.
type Answer struct {
	Endpoint netip.AddrPort
	Seen     netip.Addr
}

func (a Answer) String() string { return fmt.Sprintf("%s seeing %s", a.Endpoint, a.Seen) }

// serveTCP answers every line on each connection to at (an unspecified
// address: any of the namespace's) until the test ends.
func serveTCP(t *testing.T, ns *kernel.NetNS, at netip.AddrPort) {
	t.Helper()
	var ln net.Listener
	if err := ns.Do(func() (err error) { ln, err = net.Listen("tcp4", at.String()); return err }); err != nil {
		t.Fatalf("test bed: echo server on tcp %s: %v", at, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					if _, err := fmt.Fprintf(c, "%s %s\n", c.LocalAddr(), c.RemoteAddr()); err != nil {
						return
					}
				}
			}()
		}
	}()
}

// serveUDP answers every datagram to at until the test ends. It binds the
// address itself, so that its answers leave from it and conntrack can
// reverse a DNAT.
func serveUDP(t *testing.T, ns *kernel.NetNS, at netip.AddrPort) {
	t.Helper()
	pc, err := ns.ListenPacket("udp4", at.String())
	if err != nil {
		t.Fatalf("test bed: echo server on udp %s: %v", at, err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 64)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if _, err := pc.WriteTo(fmt.Appendf(nil, "%s %s\n", at, from), from); err != nil && errors.Is(err, net.ErrClosed) {
				return
			}
		}
	}()
}

// A Conn is a client's connection to the echo servers.
type Conn struct {
	net.Conn
	r *bufio.Reader
}

// NS is the namespace that holds a client or pod address of the plan; nil
// for any other (the node's own: use b.Node).
func (b *Bed) NS(addr netip.Addr) *kernel.NetNS { return b.byAddr[addr] }

// Dial connects from ns, from src when valid, to addr ("tcp" or "udp")
// within timeout.
func Dial(ns *kernel.NetNS, src netip.Addr, network, addr string, timeout time.Duration) (*Conn, error) {
	var c net.Conn
	err := ns.Do(func() (err error) {
		d := net.Dialer{Timeout: timeout}
		switch from := netip.AddrPortFrom(src, 0); {
		case !src.IsValid():
		case network == "udp":
			d.LocalAddr = net.UDPAddrFromAddrPort(from)
		default:
			d.LocalAddr = net.TCPAddrFromAddrPort(from)
		}
		c, err = d.DialContext(context.Background(), network+"4", addr)
		return err
	})
	if err != nil {
		return nil, err
	}
	return &Conn{Conn: c, r: bufio.NewReader(c)}, nil
}

// Ask sends a line and returns the answer, within timeout.
func (c *Conn) Ask(timeout time.Duration) (Answer, error) {
	if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
		return Answer{}, err
	}
	if _, err := c.Write([]byte("hi\n")); err != nil {
		return Answer{}, err
	}
	line, err := c.r.ReadString('\n')
	if err != nil {
		return Answer{}, err
	}
	local, remote, _ := strings.Cut(strings.TrimSpace(line), " ")
	ep, err := netip.ParseAddrPort(local)
	if err != nil {
		return Answer{}, fmt.Errorf("answer %q: %w", line, err)
	}
	seen, err := netip.ParseAddrPort(remote)
	if err != nil {
		return Answer{}, fmt.Errorf("answer %q: %w", line, err)
	}
	return Answer{Endpoint: ep, Seen: seen.Addr()}, nil
}

// Once dials, asks once and closes, each step within timeout.
func Once(ns *kernel.NetNS, src netip.Addr, network, addr string, timeout time.Duration) (Answer, error) {
	c, err := Dial(ns, src, network, addr, timeout)
	if err != nil {
		return Answer{}, err
	}
	defer c.Close()
	return c.Ask(timeout)
}

// Refused says a connection was answered with an ICMP error or a reset
// (REJECT).
func Refused(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EHOSTUNREACH)
}

// Dropped says a connection went unanswered until its timeout (DROP).
func Dropped(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded)
}
