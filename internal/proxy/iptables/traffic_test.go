package iptables

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"github.com/kdive/kdive/internal/xtables"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/ktest"
	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy"
)

// Address plan of the traffic test (all in namespaces the test creates):
//
//	node       runs the rules; ip_forward on; routes 10.252.0.0/16 (services)
//	           out cli0 so unmatched service traffic is forwarded
//	client     10.250.0.2/24 on cli0 (node 10.250.0.1): outside the pod CIDR
//	podclient  10.251.3.2/24 on pc0  (node 10.251.3.1): a pod, inside it
//	pod1       10.251.1.2/24 on pod1 (node 10.251.1.1): endpoint :8080
//	pod2       10.251.2.2/24 on pod2 (node 10.251.2.1): endpoint :8080
//
// Pod CIDR 10.251.0.0/16; services: web 10.252.0.10:80 (pod1, pod2), empty
// 10.252.0.11:80 (no endpoints: REJECT), remote 10.252.0.12:80 (iTP Local,
// its endpoint on another node: DROP), sticky 10.252.0.13:80 (ClientIP
// affinity). Each endpoint answers with its name and the client address it
// saw.
type trafficLab struct {
	node, client, podClient, pod1, pod2 *kernel.NetNS
	d                                   *proxy.Desired
}

func newTrafficLab(t *testing.T) *trafficLab {
	t.Helper()
	ktest.RequireFeature(t, kernel.FeatureVeth)
	l := &trafficLab{node: ktest.NewNetNS(t), client: ktest.NewNetNS(t), podClient: ktest.NewNetNS(t), pod1: ktest.NewNetNS(t), pod2: ktest.NewNetNS(t)}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	link := func(ns *kernel.NetNS, dev, nodeAddr, addr string) {
		must(l.node.AddVeth(dev, kernel.LinkAttrs{}, ns, "eth0", kernel.LinkAttrs{}))
		must(l.node.AddAddr(dev, netip.MustParsePrefix(nodeAddr)))
		must(ns.AddAddr("eth0", netip.MustParsePrefix(addr)))
		must(l.node.LinkUp(dev))
		must(ns.LinkUp("eth0"))
		gw := netip.MustParsePrefix(nodeAddr).Addr()
		must(ns.ReplaceRoute(kernel.Route{Dst: netip.MustParsePrefix("10.248.0.0/13"), Gateway: gw}))
	}
	link(l.client, "cli0", "10.250.0.1/24", "10.250.0.2/24")
	link(l.podClient, "pc0", "10.251.3.1/24", "10.251.3.2/24")
	link(l.pod1, "pod1", "10.251.1.1/24", "10.251.1.2/24")
	link(l.pod2, "pod2", "10.251.2.1/24", "10.251.2.2/24")
	must(l.node.Sysctl("net.ipv4.ip_forward", "1"))
	must(l.node.ReplaceRoute(kernel.Route{Dst: netip.MustParsePrefix("10.252.0.0/16"), Dev: "cli0"}))
	serve(t, l.pod1, "pod1")
	serve(t, l.pod2, "pod2")

	node := model.Node{Name: "node-1", IPs: []netip.Addr{netip.MustParseAddr("10.250.0.1")}}
	cfg := proxy.Config{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.251.0.0/16")}}
	ep := func(ip, node string) model.Endpoint {
		return model.Endpoint{IP: netip.MustParseAddr(ip), Port: 8080, NodeName: node, Ready: true, Serving: true}
	}
	svc := func(name, ip string, eps ...model.Endpoint) model.ServicePort {
		return model.ServicePort{
			Name:       model.ServicePortName{Namespace: "default", Name: name, Protocol: model.ProtocolTCP},
			ClusterIPs: []netip.Addr{netip.MustParseAddr(ip)}, Port: 80, Endpoints: eps,
		}
	}
	web := svc("web", "10.252.0.10", ep("10.251.1.2", "node-1"), ep("10.251.2.2", "node-1"))
	empty := svc("empty", "10.252.0.11")
	remote := svc("remote", "10.252.0.12", ep("10.251.9.9", "node-2"))
	remote.InternalPolicyLocal = true
	sticky := svc("sticky", "10.252.0.13", ep("10.251.1.2", "node-1"), ep("10.251.2.2", "node-1"))
	sticky.AffinityTimeout = 60
	l.d = proxy.NewDesired(cfg, node)
	for _, sp := range []model.ServicePort{empty, remote, sticky, web} {
		l.d.Services = append(l.d.Services, proxy.Resolve(sp, node))
	}
	return l
}

// serve answers every TCP connection on :8080 with "name client-ip".
func serve(t *testing.T, ns *kernel.NetNS, name string) {
	var ln net.Listener
	if err := ns.Do(func() (err error) { ln, err = net.Listen("tcp", ":8080"); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
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
}

// ask connects from ns to addr and returns the endpoint's answer.
func ask(ns *kernel.NetNS, addr string, timeout time.Duration) (pod, client string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := ns.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", "", err
	}
	pod, client, _ = strings.Cut(strings.TrimSpace(line), " ")
	return pod, client, nil
}

// TestTraffic sends real connections through the rules, in both flavours.
func TestTraffic(t *testing.T) {
	for _, f := range xtables.Flavours {
		t.Run(string(f), func(t *testing.T) {
			t.Parallel()
			requireFlavour(t, f)
			l := newTrafficLab(t)
			p := New(Options{NetNS: l.node, Flavour: f})
			if err := p.Sync(context.Background(), l.d); err != nil {
				t.Fatal(err)
			}
			testTraffic(t, l, f)
		})
	}
}

func testTraffic(t *testing.T, l *trafficLab, f Flavour) {
	nodeSide := map[string]string{"pod1": "10.251.1.1", "pod2": "10.251.2.1"}
	t.Run("pod client reaches both endpoints with its own address", func(t *testing.T) {
		seen := map[string]bool{}
		for i := 0; i < 40 && len(seen) < 2; i++ {
			pod, client, err := ask(l.podClient, "10.252.0.10:80", 2*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if client != "10.251.3.2" {
				t.Errorf("%s saw client %s, want 10.251.3.2 (not masqueraded)", pod, client)
			}
			seen[pod] = true
		}
		if len(seen) != 2 {
			t.Errorf("40 connections reached only %v", seen)
		}
	})
	for _, from := range []struct {
		name string
		ns   *kernel.NetNS
	}{{"client outside the pod CIDR", l.client}, {"node itself", l.node}} {
		t.Run(from.name+" is masqueraded", func(t *testing.T) {
			for i := 0; i < 6; i++ {
				pod, client, err := ask(from.ns, "10.252.0.10:80", 2*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				if client != nodeSide[pod] {
					t.Errorf("%s saw client %s, want the node's %s", pod, client, nodeSide[pod])
				}
			}
		})
	}
	t.Run("no endpoints: connection refused at once", func(t *testing.T) {
		start := time.Now()
		_, _, err := ask(l.podClient, "10.252.0.11:80", 2*time.Second)
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("got %v, want connection refused", err)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("refusal took %v", d)
		}
	})
	t.Run("no endpoints for this traffic: dropped", func(t *testing.T) {
		_, _, err := ask(l.podClient, "10.252.0.12:80", 300*time.Millisecond)
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Errorf("got %v, want a timeout", err)
		}
		// The DROP rule itself counted it (unmatched service traffic
		// would time out too, unanswered on cli0).
		counted := false
		for _, line := range strings.Split(iptables(t, l.node, f, "save", "-c", "-t", "filter"), "\n") {
			if strings.Contains(line, "10.252.0.12/32") && strings.HasSuffix(line, "-j DROP") {
				counted = !strings.HasPrefix(line, "[0:")
			}
		}
		if !counted {
			t.Error("the DROP rule for 10.252.0.12 counted no packet")
		}
	})
	t.Run("affinity sticks", func(t *testing.T) {
		first := ""
		for i := 0; i < 12; i++ {
			pod, _, err := ask(l.podClient, "10.252.0.13:80", 2*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if first == "" {
				first = pod
			} else if pod != first {
				t.Fatalf("connection %d went to %s, the first to %s", i, pod, first)
			}
		}
	})
}
