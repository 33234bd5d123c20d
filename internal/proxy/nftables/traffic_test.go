package nftables

import (
	"testing"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/ktest"
	"github.com/kdive/kdive/internal/proxy/proxytest/bed"
)

// TestTraffic sends the case table's packets through the rules as real
// connections (package bed has the address plan).
func TestTraffic(t *testing.T) {
	ktest.RequireFeature(t, kernel.FeatureNFTables)
	b := bed.New(t)
	p := New(Options{NetNS: b.Node})
	t.Cleanup(func() { p.Close() })
	b.Run(t, p)
}
