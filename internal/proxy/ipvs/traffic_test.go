package ipvs_test

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/kdive/kdive/internal/kernel/ktest"
	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy/ipvs"
	"github.com/kdive/kdive/internal/proxy/proxytest/bed"
)

// TestIPVSTraffic sends the case table's packets through the node as real
// connections.
func TestIPVSTraffic(t *testing.T) {
	b := newBed(t)
	b.Run(t, ipvs.New(ipvs.Options{NetNS: b.Node}))
}

// TestIPVSSchedulers gives each scheduler a service of two endpoints and
// makes real connections through it.
func TestIPVSSchedulers(t *testing.T) {
	b := newBed(t)
	var sps []model.ServicePort
	for i, s := range ipvs.Schedulers {
		sp := svc("sched-"+s, fmt.Sprintf("10.1.1.%d", i+1), ep(podA, "node-1"), ep(podB, "node-1"))
		sp.IPVSScheduler = s // as the kdive.dev/ipvs-scheduler annotation sets it
		sps = append(sps, sp)
	}
	p := ipvs.New(ipvs.Options{NetNS: b.Node, Scheduler: "wlc"})
	if err := p.Sync(t.Context(), desired(sps...)); err != nil {
		t.Fatal(err)
	}
	h, err := b.Node.OpenIPVS()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	vss, err := h.VirtualServers()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, vs := range vss {
		got[vs.Address.String()] = vs.Scheduler
	}
	for i, s := range ipvs.Schedulers {
		t.Run(s, func(t *testing.T) {
			addr := fmt.Sprintf("10.1.1.%d", i+1)
			if got[addr] != s {
				t.Errorf("%s runs %q in the kernel, want %s", addr, got[addr], s)
			}
			answered := map[string]int{}
			for range 3 {
				a, err := once(b, addr+":80")
				if err != nil {
					t.Fatalf("%v\n%s", err, diagnose(t, b))
				}
				answered[a.Endpoint.Addr().String()]++
			}
			if answered[podA]+answered[podB] != 3 {
				t.Errorf("answers %v", answered)
			}
			// rr alternates; sh hashes the client address, dh and the
			// locality schedulers the destination: one endpoint each.
			switch s {
			case "rr", "wrr":
				if len(answered) != 2 {
					t.Errorf("%s: answers %v, want both endpoints", s, answered)
				}
			case "sh", "dh", "lblc", "lblcr":
				if len(answered) != 1 {
					t.Errorf("%s: answers %v, want one endpoint", s, answered)
				}
			}
		})
	}
}

// TestIPVSAffinityAndGracefulTermination: session affinity sticks to one
// endpoint; when that endpoint leaves, a long-lived connection to it
// survives while new connections (from the same client too) go to the
// other; once the connection ends the endpoint is deleted.
func TestIPVSAffinityAndGracefulTermination(t *testing.T) {
	b := newBed(t)
	sticky := svc("sticky", "10.1.0.7", ep(podA, "node-1"), ep(podB, "node-1"))
	sticky.AffinityTimeout = 600
	p := ipvs.New(ipvs.Options{NetNS: b.Node, DrainTimeout: 2 * time.Second})
	if err := p.Sync(t.Context(), desired(sticky)); err != nil {
		t.Fatal(err)
	}
	long, err := bed.Dial(b.NS(client), client, "tcp", "10.1.0.7:80", within)
	if err != nil {
		t.Fatal(err)
	}
	defer long.Close()
	a, err := long.Ask(within)
	if err != nil {
		t.Fatal(err)
	}
	first := a.Endpoint
	for range 4 {
		if a, err := once(b, "10.1.0.7:80"); err != nil || a.Endpoint != first {
			t.Fatalf("with affinity, %s (%v) answered after %s", a, err, first)
		}
	}

	var rest netip.AddrPort
	for _, e := range sticky.Endpoints {
		if e.IP != first.Addr() {
			rest = netip.AddrPortFrom(e.IP, uint16(e.Port))
			sticky.Endpoints = []model.Endpoint{e}
		}
	}
	if err := p.Sync(t.Context(), desired(sticky)); err != nil {
		t.Fatal(err)
	}
	if a, err := long.Ask(within); err != nil || a.Endpoint != first {
		t.Errorf("the long-lived connection to %s after it left: %s, %v", first, a, err)
	}
	for range 3 {
		if a, err := once(b, "10.1.0.7:80"); err != nil || a.Endpoint != rest {
			t.Errorf("a new connection after %s left: %s, %v; want %s", first, a, err, rest)
		}
	}
	ws := weights(t, b.Node, "TCP 10.1.0.7:80")
	if ws[first.String()] != 0 || len(ws) != 2 {
		t.Errorf("real servers %v, want %s draining at weight 0", ws, first)
	}
	if a, err := long.Ask(within); err != nil || a.Endpoint != first {
		t.Errorf("the long-lived connection to %s, later: %s, %v", first, a, err)
	}

	// Closed, its connection lingers in IPVS (TIME_WAIT) until the drain
	// timeout deletes the real server, between Syncs.
	long.Close()
	ktest.Eventually(t, 8*time.Second, first.String()+" gone after its drain timeout", func() error {
		if w := weights(t, b.Node, "TCP 10.1.0.7:80"); len(w) != 1 {
			return fmt.Errorf("real servers %v", w)
		}
		return nil
	})
	if err := p.Sync(t.Context(), desired(sticky)); err != nil {
		t.Fatal(err)
	}
	if s := p.LastSync(); s.Changed() || s.RealServersDraining != 0 {
		t.Errorf("sync after the drain: %+v", s)
	}
}
