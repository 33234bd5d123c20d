package kernel

import (
	"context"
	"net"
	"time"
)

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
