package echo

import (
	"errors"
	"fmt"
	"log/slog"
	"net"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// maxDatagram caps the read buffer. The payload is ignored, so a longer
// datagram is simply truncated; it still gets its reply.
const maxDatagram = 64 << 10

// udpServer answers each datagram on one socket with one Reply datagram.
type udpServer struct {
	spec Listen
	conn *net.UDPConn
	// read reads one datagram and the destination address it was sent to
	// (nil if the kernel did not say).
	read func(b []byte) (n int, dst net.IP, src net.Addr, err error)
	id   Identity
	log  *slog.Logger
}

// newUDPServer prepares conn for serving: it asks the kernel for each
// datagram's destination address (IP_PKTINFO or IPV6_PKTINFO, by the socket's
// family: a dual-stack socket is AF_INET6 and reports IPv4 destinations as
// IPv4-mapped addresses). It always does, even when PodIP is set, so that
// there is one code path.
func newUDPServer(spec Listen, conn *net.UDPConn, id Identity, log *slog.Logger) (*udpServer, error) {
	s := &udpServer{spec: spec, conn: conn, id: id, log: log}
	family, err := socketFamily(conn)
	if err != nil {
		return nil, err
	}
	switch family {
	case unix.AF_INET:
		p := ipv4.NewPacketConn(conn)
		if err := p.SetControlMessage(ipv4.FlagDst, true); err != nil {
			return nil, fmt.Errorf("enable IP_PKTINFO: %w", err)
		}
		s.read = func(b []byte) (int, net.IP, net.Addr, error) {
			n, cm, src, err := p.ReadFrom(b)
			if cm == nil {
				return n, nil, src, err
			}
			return n, cm.Dst, src, err
		}
	case unix.AF_INET6:
		p := ipv6.NewPacketConn(conn)
		if err := p.SetControlMessage(ipv6.FlagDst, true); err != nil {
			return nil, fmt.Errorf("enable IPV6_RECVPKTINFO: %w", err)
		}
		s.read = func(b []byte) (int, net.IP, net.Addr, error) {
			n, cm, src, err := p.ReadFrom(b)
			if cm == nil {
				return n, nil, src, err
			}
			return n, cm.Dst, src, err
		}
	default:
		return nil, fmt.Errorf("socket family %d is neither AF_INET nor AF_INET6", family)
	}
	return s, nil
}

// socketFamily returns the address family of c's socket. Go picks it from
// the address (a wildcard "udp" address gives a dual-stack AF_INET6 socket),
// so asking the socket is the reliable way to know which control messages it
// delivers.
func socketFamily(c *net.UDPConn) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("socket family: %w", err)
	}
	var family int
	var serr error
	if err := rc.Control(func(fd uintptr) {
		family, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DOMAIN)
	}); err != nil {
		return 0, fmt.Errorf("socket family: %w", err)
	}
	if serr != nil {
		return 0, fmt.Errorf("socket family: getsockopt SO_DOMAIN: %w", serr)
	}
	return family, nil
}

// serve answers datagrams until the socket is closed, then returns nil.
func (s *udpServer) serve() error {
	buf := make([]byte, maxDatagram)
	for {
		_, dst, src, err := s.read(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("read: %w", err)
		}
		client := src.String()
		if _, err := s.conn.WriteTo(encode(s.id.reply(client, dst)), src); err != nil {
			s.log.Debug("UDP reply failed", "listen", s.spec.String(), "client", client, "err", err)
			continue
		}
		s.log.Debug("UDP reply", "listen", s.spec.String(), "client", client)
	}
}

// close closes the socket, which ends serve.
func (s *udpServer) close() error { return s.conn.Close() }
