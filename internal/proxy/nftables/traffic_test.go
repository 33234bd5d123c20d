package nftables

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/ktest"
	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy"
)

// Address plan of the traffic test, all inside namespaces it creates:
//
//	client 10.250.0.2 --- 10.250.0.1 node --- 10.0.1.1 | 10.0.1.2 pod1 (endpoint, node-1)
//	                                      --- 10.0.2.1 | 10.0.2.2 pod2 (endpoint, "node-2")
//	                                      --- 10.0.3.1 | 10.0.3.2 pod3 (a client pod)
//
// The node runs the proxier; cluster IPs are 10.96.0.x; the cluster CIDR
// is 10.0.0.0/16. pod2 hangs off the same node but is declared on node-2,
// so that policy Local leaves it out.
type testbed struct {
	node, client, pod1, pod2, pod3 *kernel.NetNS
	p                              *Proxier
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func newTestbed(t *testing.T) *testbed {
	ktest.RequireFeature(t, kernel.FeatureNFTables)
	ktest.RequireFeature(t, kernel.FeatureVeth)
	tb := &testbed{node: ktest.NewNetNS(t), client: ktest.NewNetNS(t), pod1: ktest.NewNetNS(t), pod2: ktest.NewNetNS(t), pod3: ktest.NewNetNS(t)}
	link := func(peer *kernel.NetNS, dev, nodeAddr, peerAddr string) {
		must(t, tb.node.AddVeth(dev, kernel.LinkAttrs{}, peer, "eth0", kernel.LinkAttrs{}))
		must(t, tb.node.AddAddr(dev, netip.MustParsePrefix(nodeAddr+"/24")))
		must(t, peer.AddAddr("eth0", netip.MustParsePrefix(peerAddr+"/24")))
		must(t, tb.node.LinkUp(dev))
		must(t, peer.LinkUp("eth0"))
		must(t, peer.ReplaceRoute(kernel.Route{Gateway: netip.MustParseAddr(nodeAddr), Dev: "eth0"}))
	}
	link(tb.client, "client", "10.250.0.1", "10.250.0.2")
	link(tb.pod1, "pod1", "10.0.1.1", "10.0.1.2")
	link(tb.pod2, "pod2", "10.0.2.1", "10.0.2.2")
	link(tb.pod3, "pod3", "10.0.3.1", "10.0.3.2")
	// The node's own traffic to service IPs needs a route before DNAT.
	must(t, tb.node.ReplaceRoute(kernel.Route{Gateway: netip.MustParseAddr("10.250.0.2"), Dev: "client"}))
	must(t, tb.node.Sysctl("net.ipv4.ip_forward", "1"))
	for name, ns := range map[string]*kernel.NetNS{"pod1": tb.pod1, "pod2": tb.pod2} {
		echo(t, ns, name)
	}
	tb.p = New(Options{NetNS: tb.node})
	t.Cleanup(func() { tb.p.Close() })
	return tb
}

// echo answers on TCP 8080 and UDP 5353 with "NAME CLIENT-IP".
func echo(t *testing.T, ns *kernel.NetNS, name string) {
	var ln net.Listener
	must(t, ns.Do(func() (err error) { ln, err = net.Listen("tcp", ":8080"); return err }))
	pc, err := ns.ListenPacket("udp", ":5353")
	must(t, err)
	t.Cleanup(func() { ln.Close(); pc.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
			fmt.Fprintf(c, "%s %s\n", name, host)
			c.Close()
		}
	}()
	go func() {
		buf := make([]byte, 64)
		for {
			_, addr, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			host, _, _ := net.SplitHostPort(addr.String())
			pc.WriteTo([]byte(name+" "+host+"\n"), addr)
		}
	}()
}

// ask connects from ns to addr and returns the answer "NAME CLIENT-IP".
func ask(ns *kernel.NetNS, network, addr string, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := ns.DialContext(ctx, network, addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	if network == "udp" {
		if _, err := c.Write([]byte("hi")); err != nil {
			return "", err
		}
		buf := make([]byte, 64)
		n, err := c.Read(buf)
		return strings.TrimSpace(string(buf[:n])), err
	}
	b, err := io.ReadAll(c)
	return strings.TrimSpace(string(b)), err
}

func (tb *testbed) desired(ports ...model.ServicePort) *proxy.Desired {
	node := model.Node{Name: "node-1", IPs: []netip.Addr{netip.MustParseAddr("10.250.0.1")}}
	cfg := proxy.Config{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16")}}
	d := proxy.NewDesired(cfg, node)
	for _, sp := range ports {
		d.Services = append(d.Services, proxy.Resolve(sp, node))
	}
	return d
}

func svc(name, clusterIP string, port int, proto model.Protocol, eps ...model.Endpoint) model.ServicePort {
	return model.ServicePort{
		Name:       model.ServicePortName{Namespace: "t", Name: name, Protocol: proto},
		ClusterIPs: []netip.Addr{netip.MustParseAddr(clusterIP)}, Port: port, Endpoints: eps,
	}
}

var (
	pod1EP = model.Endpoint{IP: netip.MustParseAddr("10.0.1.2"), Port: 8080, NodeName: "node-1", Ready: true, Serving: true}
	pod2EP = model.Endpoint{IP: netip.MustParseAddr("10.0.2.2"), Port: 8080, NodeName: "node-2", Ready: true, Serving: true}
)

func TestTraffic(t *testing.T) {
	tb := newTestbed(t)
	web := svc("web", "10.96.0.10", 80, model.ProtocolTCP, pod1EP, pod2EP)
	web.NodePort = 30080
	solo := svc("solo", "10.96.0.11", 80, model.ProtocolTCP, pod1EP)
	empty := svc("empty", "10.96.0.12", 80, model.ProtocolTCP)
	itp := svc("itp", "10.96.0.13", 80, model.ProtocolTCP, pod2EP)
	itp.InternalPolicyLocal = true
	sticky := svc("sticky", "10.96.0.14", 80, model.ProtocolTCP, pod1EP, pod2EP)
	sticky.AffinityTimeout = 60
	local := svc("local", "10.96.0.15", 80, model.ProtocolTCP, pod1EP, pod2EP)
	local.NodePort, local.ExternalPolicyLocal = 30081, true
	dns := svc("dns", "10.96.0.16", 53, model.ProtocolUDP, model.Endpoint{IP: pod1EP.IP, Port: 5353, NodeName: "node-1", Ready: true, Serving: true})
	ports := []model.ServicePort{dns, empty, itp, local, solo, sticky, web}
	must(t, tb.p.Sync(context.Background(), tb.desired(ports...)))

	// who asks n times and returns the answers seen, by answer.
	who := func(t *testing.T, from *kernel.NetNS, network, addr string, n int) map[string]int {
		t.Helper()
		seen := map[string]int{}
		for range n {
			a, err := ask(from, network, addr, 2*time.Second)
			if err != nil {
				t.Fatalf("%s %s: %v", network, addr, err)
			}
			seen[a]++
		}
		return seen
	}
	expect := func(t *testing.T, seen map[string]int, want ...string) {
		t.Helper()
		if len(seen) != len(want) {
			t.Fatalf("answers %v, want exactly %v", seen, want)
		}
		for _, w := range want {
			if seen[w] == 0 {
				t.Fatalf("answers %v, want exactly %v", seen, want)
			}
		}
	}

	t.Run("pod to cluster IP reaches both endpoints, source kept", func(t *testing.T) {
		expect(t, who(t, tb.pod3, "tcp", "10.96.0.10:80", 30), "pod1 10.0.3.2", "pod2 10.0.3.2")
	})
	t.Run("load balancing is even", func(t *testing.T) {
		// 300 connections over 2 endpoints: each gets 150 ± 50 (over
		// five standard deviations; a false alarm is a one in a million).
		seen := who(t, tb.pod3, "tcp", "10.96.0.10:80", 300)
		for _, a := range []string{"pod1 10.0.3.2", "pod2 10.0.3.2"} {
			if seen[a] < 100 || seen[a] > 200 {
				t.Errorf("answers %v: uneven", seen)
			}
		}
	})
	t.Run("outside client to cluster IP is masqueraded", func(t *testing.T) {
		expect(t, who(t, tb.client, "tcp", "10.96.0.10:80", 30), "pod1 10.0.1.1", "pod2 10.0.2.1")
	})
	t.Run("the node to cluster IP is masqueraded", func(t *testing.T) {
		expect(t, who(t, tb.node, "tcp", "10.96.0.10:80", 30), "pod1 10.0.1.1", "pod2 10.0.2.1")
	})
	t.Run("hairpin is masqueraded", func(t *testing.T) {
		expect(t, who(t, tb.pod1, "tcp", "10.96.0.11:80", 3), "pod1 10.0.1.1")
	})
	t.Run("NodePort, policy Cluster, is masqueraded", func(t *testing.T) {
		expect(t, who(t, tb.client, "tcp", "10.250.0.1:30080", 30), "pod1 10.0.1.1", "pod2 10.0.2.1")
	})
	t.Run("NodePort, policy Local, only local endpoints, source kept", func(t *testing.T) {
		expect(t, who(t, tb.client, "tcp", "10.250.0.1:30081", 10), "pod1 10.250.0.2")
	})
	t.Run("UDP", func(t *testing.T) {
		expect(t, who(t, tb.pod3, "udp", "10.96.0.16:53", 3), "pod1 10.0.3.2")
	})
	t.Run("affinity sticks", func(t *testing.T) {
		if seen := who(t, tb.pod3, "tcp", "10.96.0.14:80", 15); len(seen) != 1 {
			t.Errorf("answers %v, want one endpoint every time", seen)
		}
	})
	t.Run("no endpoints: refused at once", func(t *testing.T) {
		start := time.Now()
		_, err := ask(tb.pod3, "tcp", "10.96.0.12:80", 2*time.Second)
		if !errors.Is(err, syscall.ECONNREFUSED) || time.Since(start) > 500*time.Millisecond {
			t.Errorf("got %v after %v, want connection refused at once", err, time.Since(start))
		}
	})
	t.Run("endpoints elsewhere only: dropped", func(t *testing.T) {
		_, err := ask(tb.pod3, "tcp", "10.96.0.13:80", 300*time.Millisecond)
		if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("got %v, want a timeout", err)
		}
	})
	t.Run("an endpoint removed leaves rotation at once", func(t *testing.T) {
		web.Endpoints = []model.Endpoint{pod2EP}
		ports[len(ports)-1] = web
		d := tb.desired(ports...)
		d.Changed = map[model.ServicePortName]bool{web.Name: true}
		must(t, tb.p.Sync(context.Background(), d))
		expect(t, who(t, tb.pod3, "tcp", "10.96.0.10:80", 10), "pod2 10.0.3.2")
	})
}
