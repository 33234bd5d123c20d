package podnet_test

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kdive/kdive/internal/kernel"
)

// Traffic helpers: sockets are opened inside a namespace (NetNS.Do) and
// used from any thread afterwards.

const ioTimeout = 5 * time.Second

// tcpRoundTrip sends size random bytes from a socket in from to an echo
// server listening on dst in to, and checks that the same bytes come back.
func tcpRoundTrip(from, to *kernel.NetNS, dst netip.Addr, size int) error {
	var ln net.Listener
	if err := to.Do(func() (err error) {
		ln, err = net.Listen("tcp4", netip.AddrPortFrom(dst, 0).String())
		return err
	}); err != nil {
		return err
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		if c.SetDeadline(time.Now().Add(ioTimeout)) == nil {
			_, _ = io.Copy(c, c) // what it failed to echo shows at the client
		}
	}()
	var c net.Conn
	if err := from.Do(func() (err error) {
		c, err = net.DialTimeout("tcp4", ln.Addr().String(), 3*time.Second)
		return err
	}); err != nil {
		return err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(ioTimeout)); err != nil {
		return err
	}
	payload := make([]byte, size)
	_, _ = rand.Read(payload) // never fails
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		werr <- err
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		return fmt.Errorf("read echo from %s: %w", ln.Addr(), err)
	}
	if err := <-werr; err != nil {
		return fmt.Errorf("write to %s: %w", ln.Addr(), err)
	}
	if !bytes.Equal(got, payload) {
		return fmt.Errorf("echo from %s: got %d bytes back, want the %d sent", ln.Addr(), len(got), size)
	}
	return nil
}

// udpDF sends one datagram of payload bytes with the don't-fragment bit
// (IP_PMTUDISC_DO) from a socket in from to dst in to. It returns the
// error of the send (EMSGSIZE when the route's MTU is too small) or of the
// receive (a timeout when it was lost).
func udpDF(from, to *kernel.NetNS, dst netip.Addr, payload int) error {
	var ln *net.UDPConn
	if err := to.Do(func() (err error) {
		ln, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, 0)))
		return err
	}); err != nil {
		return err
	}
	defer ln.Close()
	var c *net.UDPConn
	if err := from.Do(func() (err error) {
		c, err = net.DialUDP("udp4", nil, ln.LocalAddr().(*net.UDPAddr))
		return err
	}); err != nil {
		return err
	}
	defer c.Close()
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_DO)
	}); err != nil || serr != nil {
		return fmt.Errorf("set IP_PMTUDISC_DO: %v %v", err, serr)
	}
	if _, err := c.Write(make([]byte, payload)); err != nil {
		return err
	}
	if err := ln.SetReadDeadline(time.Now().Add(2 * time.Second)); err != nil {
		return err
	}
	buf := make([]byte, 65536)
	n, err := ln.Read(buf)
	if err != nil {
		return fmt.Errorf("receive %d bytes at %s: %w", payload, ln.LocalAddr(), err)
	}
	if n != payload {
		return fmt.Errorf("received %d bytes at %s, sent %d", n, ln.LocalAddr(), payload)
	}
	return nil
}

// fragCounters reads a namespace's IP fragmentation counters:
// FragCreates (fragments it made) plus ReasmReqds (fragments it had to
// reassemble). /proc/thread-self/net follows the calling thread's network
// namespace, which Do sets.
func fragCounters(t *testing.T, ns *kernel.NetNS) int64 {
	t.Helper()
	var total int64
	must(t, ns.Do(func() error {
		f, err := os.Open("/proc/thread-self/net/snmp")
		if err != nil {
			return err
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		var names []string
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) == 0 || fields[0] != "Ip:" {
				continue
			}
			if names == nil {
				names = fields
				continue
			}
			for i, v := range fields {
				if i < len(names) && (names[i] == "FragCreates" || names[i] == "ReasmReqds") {
					n, _ := strconv.ParseInt(v, 10, 64)
					total += n
				}
			}
		}
		return sc.Err()
	}))
	return total
}
