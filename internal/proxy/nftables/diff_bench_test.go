package nftables

import (
	"net/netip"
	"testing"
)

// The diff hot path without the kernel: planning the transaction for a
// one-endpoint change against what is programmed (10,000 × 10), and for a
// periodic full resync that finds nothing (Changed nil).
func BenchmarkPlanOneEndpoint10k(b *testing.B) {
	d := GenerateDesired(10000, 10)
	p := New(Options{})
	p.cur = Render(d)
	i := 5000
	sp := GeneratedPort(i, 10)
	n := 0
	for b.Loop() {
		n++
		sp.Endpoints[0].IP = netip.AddrFrom4([4]byte{10, 15, byte(n >> 8), byte(n)})
		t, next := p.plan(withPort(d, i, sp))
		if t.Empty() {
			b.Fatal("a changed endpoint planned no change")
		}
		p.cur = next
	}
}

// BenchmarkPlanUnknownNoop10k: a plan told nothing of what changed
// (Changed nil: a snapshot built by hand, a new node or new settings)
// renders the whole table and compares it.
func BenchmarkPlanUnknownNoop10k(b *testing.B) {
	d := GenerateDesired(10000, 10)
	p := New(Options{})
	p.cur = Render(d)
	d.Changed = nil
	for b.Loop() {
		if t, _ := p.plan(d); !t.Empty() {
			b.Fatal("an unchanged state planned a change")
		}
	}
}
