package ipvs

import (
	"testing"

	"github.com/kdive/kdive/internal/proxy"
	"github.com/kdive/kdive/internal/proxy/proxytest"
)

// TestTraceCases runs the packet-flow case table every proxy mode passes
// through the rendered plan, without root or a kernel.
func TestTraceCases(t *testing.T) {
	proxytest.Run(t, func(t *testing.T, d *proxy.Desired, p proxytest.Packet) proxytest.Result {
		return Trace(Render(d, Config{}), p)
	})
}
