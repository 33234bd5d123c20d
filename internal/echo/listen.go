package echo

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// Listen is one socket to serve.
type Listen struct {
	// Proto is "tcp" (HTTP) or "udp" (datagrams).
	Proto string
	// Addr is HOST:PORT as net.Listen takes it; HOST may be empty for every
	// address (dual-stack), and an IPv6 HOST is in brackets.
	Addr string
}

// String returns l in the form ParseListen accepts: "tcp:8080" when the host
// is empty, "udp:[::1]:53" otherwise.
func (l Listen) String() string {
	if host, port, err := net.SplitHostPort(l.Addr); err == nil && host == "" {
		return l.Proto + ":" + port
	}
	return l.Proto + ":" + l.Addr
}

// listenSyntax is what ParseListen expects, quoted in its errors.
const listenSyntax = "[tcp:|udp:][HOST:]PORT, HOST an IP address (IPv6 in brackets)"

// ParseListen parses a --listen value: [tcp:|udp:][HOST:]PORT. The protocol
// defaults to tcp and is case-insensitive (so a containerPort's "UDP" works);
// HOST, when given, must be an IP address, IPv6 in brackets; PORT is 1-65535.
// Examples: "8080", "tcp:8080", "udp:53", "tcp:10.0.1.5:8080", "udp:[::1]:53".
func ParseListen(s string) (Listen, error) {
	bad := func(format string, args ...any) (Listen, error) {
		return Listen{}, fmt.Errorf("--listen %q: "+format, append([]any{s}, args...)...)
	}
	if s == "" {
		return bad("expected %s", listenSyntax)
	}
	proto, rest := "tcp", s
	if p, r, ok := strings.Cut(s, ":"); ok {
		switch lp := strings.ToLower(p); {
		case lp == "tcp" || lp == "udp":
			proto, rest = lp, r
		case isWord(p):
			return bad("%q is neither a protocol (tcp, udp) nor an IP address", p)
		}
	}
	host, port := "", rest
	if strings.Contains(rest, ":") {
		h, p, err := net.SplitHostPort(rest)
		if err != nil {
			return bad("expected %s", listenSyntax)
		}
		if h != "" {
			if _, err := netip.ParseAddr(h); err != nil {
				return bad("host %q is not an IP address", h)
			}
		}
		host, port = h, p
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 {
		return bad("port %q is not a number in 1-65535", port)
	}
	return Listen{Proto: proto, Addr: net.JoinHostPort(host, strconv.FormatUint(n, 10))}, nil
}

// isWord reports whether s is a non-empty run of ASCII letters, which in a
// --listen value can only have been meant as a protocol or a host name.
func isWord(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if (c < 'a' || c > 'z') && (c < 'A' || c > 'Z') {
			return false
		}
	}
	return true
}
