package kernel

import (
	"context"
	"net"
	"time"
)

// DialContext opens a connection from inside the namespace. A socket keeps
// the namespace it was created in, so the connection can then be used from
// any goroutine. Use it as an http.Transport's DialContext: a transport
// dials on goroutines of its own, which are NOT in the namespace that
// called it, so dialing inside Do is not enough for HTTP clients.
func (n *NetNS) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// ListenPacket opens a packet socket inside the namespace.
func (n *NetNS) ListenPacket(network, addr string) (net.PacketConn, error) {
	var c net.PacketConn
	err := n.Do(func() (err error) {
		c, err = net.ListenPacket(network, addr)
		return err
	})
	return c, err
}

// DialTimed is DialContext that also says how long the connect took,
// measured inside the namespace: from just before the socket is created to
// the completed handshake, without the cost of entering the namespace
// (locking a thread, setns), which is the same whatever the packet meets on
// its way and would only blur a first-packet latency (`kdive bench`).
func (n *NetNS) DialTimed(ctx context.Context, network, addr string) (net.Conn, time.Duration, error) {
	var (
		c    net.Conn
		took time.Duration
	)
	err := n.Do(func() (err error) {
		var d net.Dialer
		start := time.Now()
		c, err = d.DialContext(ctx, network, addr)
		took = time.Since(start)
		return err
	})
	return c, took, err
}
