package iptables

import (
	"testing"

	"github.com/kdive/kdive/internal/proxy"
	"github.com/kdive/kdive/internal/proxy/proxytest"
)

// TestTraceCases runs the shared packet-flow case table through the
// rendered rules.
func TestTraceCases(t *testing.T) {
	proxytest.Run(t, func(t *testing.T, d *proxy.Desired, p proxytest.Packet) proxytest.Result {
		return Trace(Render(d), p)
	})
}
