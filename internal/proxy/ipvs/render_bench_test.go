package ipvs

import (
	"testing"

	"github.com/kdive/kdive/internal/proxy/nftables"
)

// Render of 10,000 services × 10 endpoints: the virtual servers, ipset
// entries and rules of the IPVS mode (no kernel).
func BenchmarkRender10k(b *testing.B) {
	d := nftables.GenerateDesired(10000, 10)
	for b.Loop() {
		Render(d, Config{})
	}
}
