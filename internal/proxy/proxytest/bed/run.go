package bed

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy"
	"github.com/kdive/kdive/internal/proxy/proxytest"
)

const (
	// tries is how many connections a DNAT case makes: enough that each
	// of three endpoints picked at random answers (a miss is one in 60,000).
	tries = 30
	// dropAfter is how long a connection that must be dropped waits.
	dropAfter = 300 * time.Millisecond
	// refuseWithin is how soon a rejected connection is refused ("at
	// once": not after a retransmission).
	refuseWithin = 500 * time.Millisecond
	answerWithin = 3 * time.Second
)

// Run syncs proxytest's Fixture into be, a backend programming b.Node, and
// sends each case's packet through the node as real connections: a
// verdict is what they meet (an answer from the packet's own destination
// is ACCEPT; from endpoints, DNAT with whether each saw the node's MasqIP;
// a refusal REJECT; silence DROP). Then it checks what one packet cannot
// show: balancing, and an endpoint leaving rotation at once (Run leaves
// be synced to that last snapshot).
func (b *Bed) Run(t *testing.T, be proxy.Backend) {
	t.Helper()
	d := proxytest.Fixture()
	if err := be.Sync(t.Context(), d); err != nil {
		t.Fatalf("%s: sync the fixture: %v", be.Mode(), err)
	}
	for _, c := range proxytest.Cases() {
		t.Run(c.Name, func(t *testing.T) {
			got, err := b.observe(c.Packet, c.Want.Verdict)
			if err != nil {
				t.Fatalf("%s: %v", c.Packet, err)
			}
			want := c.Want
			if sticky(d, c.Packet) && len(got.Endpoints) == 1 {
				// One client with session affinity sticks to one of them.
				for ep := range got.Endpoints {
					if masq, ok := want.Endpoints[ep]; ok {
						want.Endpoints = map[string]bool{ep: masq}
					}
				}
			}
			if got.String() != want.String() {
				t.Errorf("%s through the kernel:\n got %s\nwant %s", c.Packet, got, want)
			}
		})
	}
	pod := b.NS(proxytest.LocalPod)
	t.Run("load balancing is even", func(t *testing.T) {
		// 300 connections over 2 endpoints: each gets 150 ± 50 (over five
		// standard deviations; a false alarm is one in a million).
		seen := Who(t, pod, proxytest.LocalPod, "tcp", "10.1.0.10:53", 300)
		for _, ep := range []string{"10.0.1.3:53", "10.0.2.3:53"} {
			if n := seen[netip.MustParseAddrPort(ep)]; n < 100 || n > 200 {
				t.Errorf("answers %v: uneven", seen)
			}
		}
	})
	t.Run("an endpoint removed leaves rotation at once", func(t *testing.T) {
		web := model.ServicePortName{Namespace: "default", Name: "web", Port: "http", Protocol: model.ProtocolTCP}
		left := EP("10.0.2.2", 8080, "node-2")
		left.Zone = "zone-a"
		if err := be.Sync(t.Context(), WithEndpoints(d, web, left)); err != nil {
			t.Fatalf("%s: sync web with one endpoint: %v", be.Mode(), err)
		}
		seen := Who(t, pod, proxytest.LocalPod, "tcp", "10.1.0.2:80", 10)
		if len(seen) != 1 || seen[netip.MustParseAddrPort("10.0.2.2:8080")] != 10 {
			t.Errorf("answers %v, want 10.0.2.2:8080 only", seen)
		}
	})
}

// observe sends p (as connections from the namespace that holds its
// source) and says what became of it. want is the verdict expected: a
// connection waits for an answer only dropAfter when it must be dropped.
func (b *Bed) observe(p proxytest.Packet, want proxy.Verdict) (proxy.Result, error) {
	ns := b.ns(p)
	if ns == nil {
		return proxy.Result{}, fmt.Errorf("no namespace of the bed holds %s", p.Src)
	}
	network := "tcp"
	if p.Proto == model.ProtocolUDP {
		network = "udp"
	}
	dst := netip.AddrPortFrom(p.Dst, uint16(p.Port))
	timeout := answerWithin
	if want == proxy.DROP {
		timeout = dropAfter
	}
	res := proxy.Result{Verdict: proxy.DNAT, Endpoints: map[string]bool{}}
	for i := range tries {
		start := time.Now()
		a, err := Once(ns, p.Src, network, dst.String(), timeout)
		took := time.Since(start)
		switch {
		case err != nil && i > 0:
			return res, fmt.Errorf("connection %d, after %s: %w", i+1, res, err)
		case Refused(err) && took > refuseWithin:
			return proxy.Result{}, fmt.Errorf("refused only after %v: %w", took, err)
		case Refused(err):
			return proxy.Result{Verdict: proxy.REJECT}, nil
		case Dropped(err):
			return proxy.Result{Verdict: proxy.DROP}, nil
		case err != nil:
			return proxy.Result{}, err
		case a.Endpoint == dst && a.Seen == p.Src && i == 0:
			return proxy.Result{Verdict: proxy.ACCEPT}, nil
		}
		var masq bool
		switch a.Seen {
		case p.Src:
		case MasqIP:
			masq = true
		default:
			return res, fmt.Errorf("%s: neither the source nor the node's %s", a, MasqIP)
		}
		ep := a.Endpoint.String()
		if was, ok := res.Endpoints[ep]; ok && was != masq {
			return res, fmt.Errorf("%s: masqueraded on some connections only", a)
		}
		res.Endpoints[ep] = masq
	}
	return res, nil
}

// sticky says p is for a cluster IP port with session affinity.
func sticky(d *proxy.Desired, p proxytest.Packet) bool {
	return slices.ContainsFunc(d.Services, func(sp *proxy.Port) bool {
		return sp.AffinityTimeout > 0 && sp.Port == p.Port && sp.Name.Protocol == p.Proto && slices.Contains(sp.ClusterIPs, p.Dst)
	})
}

// Who makes n connections from ns (from src when valid) to addr, each
// asking once, and counts the answers by endpoint; any failure fails t.
func Who(t *testing.T, ns *kernel.NetNS, src netip.Addr, network, addr string, n int) map[netip.AddrPort]int {
	t.Helper()
	seen := map[netip.AddrPort]int{}
	for range n {
		a, err := Once(ns, src, network, addr, answerWithin)
		if err != nil {
			t.Fatalf("%s %s after answers %v: %v", network, addr, seen, err)
		}
		seen[a.Endpoint]++
	}
	return seen
}

// WithEndpoints is d with one port's endpoints replaced, and Changed
// naming only it.
func WithEndpoints(d *proxy.Desired, name model.ServicePortName, eps ...model.Endpoint) *proxy.Desired {
	out := *d
	out.Services = slices.Clone(d.Services)
	out.Changed = map[model.ServicePortName]bool{name: true}
	for i, p := range out.Services {
		if p.Name == name {
			sp := p.ServicePort
			sp.Endpoints = eps
			out.Services[i] = proxy.Resolve(sp, d.Node)
		}
	}
	return &out
}
