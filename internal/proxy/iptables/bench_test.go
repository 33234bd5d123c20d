package iptables

import (
	"context"
	"fmt"
	"github.com/kdive/kdive/internal/xtables"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy"
)

// Benchmarks at the scale: n services × 10 endpoints. The kernel
// ones need root and run each flavour in fresh namespaces; run them with
// -benchtime=1x for first syncs (one 10k first sync takes seconds):
//
//	go test -run '^$' -bench 'Sync/.*/1k' -benchtime=5x ./internal/proxy/iptables/
//	go test -run '^$' -bench 'Sync/.*/10k' -benchtime=1x ./internal/proxy/iptables/

func BenchmarkRender10k(b *testing.B) {
	d := scaleDesired(10000, 10)
	b.ReportAllocs()
	for b.Loop() {
		Render(d)
	}
}

// BenchmarkRenderChange10k is the render half of a one-endpoint change:
// one port rendered again, the shared chains assembled, the changed
// chains hashed.
func BenchmarkRenderChange10k(b *testing.B) {
	d := scaleDesired(10000, 10)
	r := newRenderer()
	prev := r.render(d, nil)
	p := New(Options{})
	p.prev, p.applied = prev, map[chainKey]uint64{}
	for _, c := range prev.Chains() {
		p.applied[chainKey{c.Table, c.Name}] = p.hashOf(c)
	}
	i := 0
	b.ReportAllocs()
	for b.Loop() {
		next := changeOne(d, i)
		i++
		rs := r.render(next, p.prev)
		if pl := p.planPartial(rs); pl.empty() {
			b.Fatal("no change planned")
		}
	}
}

// changeOne moves one endpoint of port i%n to a new address.
func changeOne(d *proxy.Desired, i int) *proxy.Desired {
	k := i % len(d.Services)
	sp := d.Services[k].ServicePort
	sp.Endpoints = append([]model.Endpoint(nil), sp.Endpoints...)
	sp.Endpoints[0].IP = netip.AddrFrom4([4]byte{10, 200 + byte(i>>16&31), byte(i >> 8), byte(i)})
	out := *d
	out.Services = append([]*proxy.Port(nil), d.Services...)
	out.Services[k] = proxy.Resolve(sp, d.Node)
	out.Changed = map[model.ServicePortName]bool{sp.Name: true}
	return &out
}

func BenchmarkSync(b *testing.B) {
	for _, f := range xtables.Flavours {
		for _, n := range []int{1000, 10000} {
			d := scaleDesired(n, 10)
			name := fmt.Sprintf("%s/%dk", f, n/1000)
			b.Run(name+"/first", func(b *testing.B) { benchFirst(b, f, d) })
			b.Run(name+"/change", func(b *testing.B) { benchChange(b, f, d, false) })
			b.Run(name+"/noop", func(b *testing.B) { benchChange(b, f, d, true) })
			b.Run(name+"/resync", func(b *testing.B) { benchResync(b, f, d) })
		}
	}
}

// benchNetNS is a fresh namespace, deleted by the returned func.
func benchNetNS(b *testing.B) (*kernel.NetNS, func()) {
	b.Helper()
	name := fmt.Sprintf("kdive-bench-%d", benchSeq)
	benchSeq++
	_ = kernel.DeleteNetNS(name) // left by an earlier run, if any
	ns, err := kernel.CreateNetNS(name)
	if err != nil {
		b.Fatal(err)
	}
	return ns, func() {
		ns.Close()
		if err := kernel.DeleteNetNS(name); err != nil {
			b.Fatal(err)
		}
	}
}

var benchSeq int

func benchFirst(b *testing.B, f Flavour, d *proxy.Desired) {
	requireFlavour(b, f)
	ctx := context.Background()
	var restores, bytes int
	var cpu cpuTime
	for b.Loop() {
		b.StopTimer()
		ns, done := benchNetNS(b)
		p := New(Options{NetNS: ns, Flavour: f})
		b.StartTimer()
		cpu.start()
		if err := p.Sync(ctx, d); err != nil {
			b.Fatal(err)
		}
		cpu.stop()
		b.StopTimer()
		restores, bytes = p.Stats().Last.Restores, p.Stats().Last.Bytes
		done()
		b.StartTimer()
	}
	b.ReportMetric(float64(restores), "restores/op")
	b.ReportMetric(float64(bytes)/1e6, "MB/op")
	cpu.report(b)
}

// cpuTime sums the CPU time (user+system) of this process and its
// children (iptables-restore) over timed sections: on a busy machine the
// wall time says more about the neighbours.
type cpuTime struct {
	self, children time.Duration
	s0, c0         time.Duration
	n              int
}

func rusage(who int) time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(who, &ru) // fails only for an unknown who
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func (c *cpuTime) start() { c.s0, c.c0 = rusage(syscall.RUSAGE_SELF), rusage(syscall.RUSAGE_CHILDREN) }

func (c *cpuTime) stop() {
	c.self += rusage(syscall.RUSAGE_SELF) - c.s0
	c.children += rusage(syscall.RUSAGE_CHILDREN) - c.c0
	c.n++
}

func (c *cpuTime) report(b *testing.B) {
	if c.n > 0 {
		b.ReportMetric(float64(c.self.Milliseconds())/float64(c.n), "go-cpu-ms/op")
		b.ReportMetric(float64(c.children.Milliseconds())/float64(c.n), "iptables-cpu-ms/op")
	}
}

func benchChange(b *testing.B, f Flavour, d *proxy.Desired, noop bool) {
	requireFlavour(b, f)
	ctx := context.Background()
	ns, done := benchNetNS(b)
	defer done()
	p := New(Options{NetNS: ns, Flavour: f})
	if err := p.Sync(ctx, d); err != nil {
		b.Fatal(err)
	}
	cur := d
	i := 0
	var bytes int
	var cpu cpuTime
	for b.Loop() {
		next := unchanged(cur)
		if !noop {
			next = changeOne(cur, i)
		}
		i++
		cpu.start()
		if err := p.Sync(ctx, next); err != nil {
			b.Fatal(err)
		}
		cpu.stop()
		bytes = p.Stats().Last.Bytes
		cur = next
	}
	b.ReportMetric(float64(bytes), "restore-bytes/op")
	cpu.report(b)
}

// benchResync is a full Sync (Desired.Changed nil) over rules already in
// place: the periodic resync.
func benchResync(b *testing.B, f Flavour, d *proxy.Desired) {
	requireFlavour(b, f)
	ctx := context.Background()
	ns, done := benchNetNS(b)
	defer done()
	p := New(Options{NetNS: ns, Flavour: f})
	if err := p.Sync(ctx, d); err != nil {
		b.Fatal(err)
	}
	var cpu cpuTime
	for b.Loop() {
		cpu.start()
		if err := p.Sync(ctx, d); err != nil {
			b.Fatal(err)
		}
		cpu.stop()
	}
	cpu.report(b)
}
