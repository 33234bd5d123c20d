package ipvs_test

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/kdive/kdive/internal/kernel/ktest"
	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy/ipvs"
)

// TestIPVSTrafficSemantics sends real connections through the node for
// the behaviours of the case table that differ by source: who answers
// and which client address the endpoint sees.
func TestIPVSTrafficSemantics(t *testing.T) {
	b := newBed(t)
	web := svc("web", "10.1.0.2", ep("pod-a", "node-1"), ep("pod-b", "node-1"))
	web.NodePort = 30080
	empty := svc("empty", "10.1.0.3")
	// local: eTP Local; pod-a is on this node, pod-b "on node-2".
	local := svc("local", "10.1.0.4", ep("pod-a", "node-1"), ep("pod-b", "node-2"))
	local.NodePort, local.ExternalPolicyLocal = 30082, true
	local.LoadBalancerIPs = []netip.Addr{netip.MustParseAddr("203.0.113.20")}
	local.LoadBalancerSourceRanges = []netip.Prefix{netip.PrefixFrom(clientIP, 32)}
	// localNone: eTP Local with its only endpoint elsewhere.
	localNone := svc("local-none", "10.1.0.5", ep("pod-b", "node-2"))
	localNone.NodePort, localNone.ExternalPolicyLocal = 30083, true
	itpLocal := svc("itp-local", "10.1.0.6", ep("pod-b", "node-2"))
	itpLocal.InternalPolicyLocal = true
	dns := svc("dns", "10.1.0.10", ep("pod-a", "node-1"))
	dns.Name.Protocol, dns.Port = model.ProtocolUDP, 53
	dns.Endpoints[0].Port = 5353

	p := ipvs.New(ipvs.Options{NetNS: b.node})
	if err := p.Sync(t.Context(), desired(web, empty, local, localNone, itpLocal, dns)); err != nil {
		t.Fatal(err)
	}
	none := netip.Addr{}
	cases := []struct {
		name     string
		from     string // pod name, "node" or "client"
		src      netip.Addr
		addr     string
		pods     []string   // who may answer; nil: refused or dropped
		seen     netip.Addr // the client address the endpoint sees
		rejected bool       // refused rather than dropped
	}{
		{"pod to cluster IP keeps its source", "pod-c", none, "10.1.0.2:80", []string{"pod-a", "pod-b"}, podIPs["pod-c"], false},
		{"node to cluster IP is masqueraded", "node", none, "10.1.0.2:80", []string{"pod-a", "pod-b"}, bridgeIP, false},
		{"client to NodePort is masqueraded", "client", clientIP, "172.20.1.10:30080", []string{"pod-a", "pod-b"}, bridgeIP, false},
		{"cluster IP without endpoints rejects", "pod-c", none, "10.1.0.3:80", nil, none, true},
		{"eTP Local NodePort keeps the client's source", "client", clientIP, "172.20.1.10:30082", []string{"pod-a"}, clientIP, false},
		{"LoadBalancer IP in the source range", "client", clientIP, "203.0.113.20:80", []string{"pod-a"}, clientIP, false},
		{"LoadBalancer IP outside the source range drops", "client", client2IP, "203.0.113.20:80", nil, none, false},
		{"eTP Local without local endpoints drops outside traffic", "client", clientIP, "172.20.1.10:30083", nil, none, false},
		{"eTP Local short-circuits pods", "pod-c", none, "172.20.1.10:30083", []string{"pod-b"}, podIPs["pod-c"], false},
		{"eTP Local short-circuits the node, masqueraded", "node", none, "172.20.1.10:30083", []string{"pod-b"}, bridgeIP, false},
		{"iTP Local without local endpoints drops", "pod-c", none, "10.1.0.6:80", nil, none, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ns := b.client
			if c.from == "node" {
				ns = b.node
			} else if pod, ok := b.pods[c.from]; ok {
				ns = pod
			}
			if c.pods == nil {
				conn, err := dial(ns, c.src, c.addr, 300*time.Millisecond)
				if err == nil {
					conn.Close()
					t.Fatalf("%s from %s connected", c.addr, c.from)
				}
				if c.rejected && !refused(err) || !c.rejected && !dropped(err) {
					t.Errorf("%s from %s: %v; want it %s", c.addr, c.from, err, map[bool]string{true: "refused", false: "dropped"}[c.rejected])
				}
				return
			}
			pod, seen, err := once(ns, c.src, c.addr)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Contains(c.pods, pod) || seen != c.seen {
				t.Errorf("%s from %s: %s answered, seeing %s; want one of %v seeing %s", c.addr, c.from, pod, seen, c.pods, c.seen)
			}
		})
	}
	t.Run("hairpin: a pod reaching itself is masqueraded", func(t *testing.T) {
		c := connectTo(t, b.pods["pod-a"], "10.1.0.2:80", "pod-a")
		defer c.Close()
		if _, seen, err := c.ask(); err != nil || seen != bridgeIP {
			t.Errorf("pod-a through its service saw %s, %v; want %s", seen, err, bridgeIP)
		}
	})
	t.Run("UDP service", func(t *testing.T) {
		if pod, err := udpAsk(b.pods["pod-c"], "10.1.0.10:53"); err != nil || pod != "pod-a" {
			t.Errorf("UDP 10.1.0.10:53: %q, %v", pod, err)
		}
	})
}

// TestIPVSSchedulers gives each scheduler a service of two endpoints and
// makes real connections through it.
func TestIPVSSchedulers(t *testing.T) {
	b := newBed(t)
	var sps []model.ServicePort
	for i, s := range ipvs.Schedulers {
		sp := svc("sched-"+s, fmt.Sprintf("10.1.1.%d", i+1), ep("pod-a", "node-1"), ep("pod-b", "node-1"))
		sp.IPVSScheduler = s // as the kdive.dev/ipvs-scheduler annotation sets it
		sps = append(sps, sp)
	}
	p := ipvs.New(ipvs.Options{NetNS: b.node, Scheduler: "wlc"})
	if err := p.Sync(t.Context(), desired(sps...)); err != nil {
		t.Fatal(err)
	}
	h, err := b.node.OpenIPVS()
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
				pod, _, err := once(b.pods["pod-c"], netip.Addr{}, addr+":80")
				if err != nil {
					t.Fatalf("%v\n%s", err, b.diagnose(t))
				}
				answered[pod]++
			}
			if answered["pod-a"]+answered["pod-b"] != 3 {
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
	sticky := svc("sticky", "10.1.0.7", ep("pod-a", "node-1"), ep("pod-b", "node-1"))
	sticky.AffinityTimeout = 600
	p := ipvs.New(ipvs.Options{NetNS: b.node, DrainTimeout: 2 * time.Second})
	if err := p.Sync(t.Context(), desired(sticky)); err != nil {
		t.Fatal(err)
	}
	client := b.pods["pod-c"]
	long, err := dial(client, netip.Addr{}, "10.1.0.7:80", 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer long.Close()
	first, _, err := long.ask()
	if err != nil {
		t.Fatal(err)
	}
	for range 4 {
		if pod, _, err := once(client, netip.Addr{}, "10.1.0.7:80"); err != nil || pod != first {
			t.Fatalf("with affinity, %q (%v) answered after %s", pod, err, first)
		}
	}

	var rest []string
	for _, e := range sticky.Endpoints {
		if e.Pod != "default/"+first {
			rest = append(rest, e.Pod[len("default/"):])
			sticky.Endpoints = []model.Endpoint{e}
		}
	}
	if err := p.Sync(t.Context(), desired(sticky)); err != nil {
		t.Fatal(err)
	}
	if pod, _, err := long.ask(); err != nil || pod != first {
		t.Errorf("the long-lived connection to %s after it left: %q, %v", first, pod, err)
	}
	for range 3 {
		if pod, _, err := once(client, netip.Addr{}, "10.1.0.7:80"); err != nil || pod != rest[0] {
			t.Errorf("a new connection after %s left: %q, %v; want %s", first, pod, err, rest[0])
		}
	}
	ws := weights(t, b.node, "TCP 10.1.0.7:80")
	if ws[podIPs[first].String()+":8080"] != 0 || len(ws) != 2 {
		t.Errorf("real servers %v, want %s draining at weight 0", ws, first)
	}
	if pod, _, err := long.ask(); err != nil || pod != first {
		t.Errorf("the long-lived connection to %s, later: %q, %v", first, pod, err)
	}

	// Closed, its connection lingers in IPVS (TIME_WAIT) until the drain
	// timeout deletes the real server, between Syncs.
	long.Close()
	ktest.Eventually(t, 8*time.Second, first+" gone after its drain timeout", func() error {
		if w := weights(t, b.node, "TCP 10.1.0.7:80"); len(w) != 1 {
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
