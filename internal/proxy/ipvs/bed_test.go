package ipvs_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/ktest"
	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy"
)

// The test bed: namespaces these tests create, and nothing else.
//
//	client (172.20.1.20, .21) --ext0-- node (172.20.1.10; br0 10.0.1.1/24) --br0-- pod-a 10.0.1.2
//	                                                                              pod-b 10.0.1.3
//	                                                                              pod-c 10.0.1.4
//
// The node runs the IPVS proxy (node-1, zone-a). Pods are bridged but
// hold /32s with the node (10.0.1.1, on-link) as gateway, so pod-to-pod
// replies go through the node as on a routed pod network; the client routes service ranges (10.1.0.0/16,
// 203.0.113.0/24) to the node. Every pod runs an echo server on TCP 8080
// and UDP 5353 answering "<pod> <client address it saw>". A test may
// claim an endpoint runs on node-2 (its NodeName) to exercise the traffic
// policies; packets still reach it over br0.
var (
	nodeIP    = netip.MustParseAddr("172.20.1.10")
	bridgeIP  = netip.MustParseAddr("10.0.1.1")
	clientIP  = netip.MustParseAddr("172.20.1.20")
	client2IP = netip.MustParseAddr("172.20.1.21")
	podIPs    = map[string]netip.Addr{
		"pod-a": netip.MustParseAddr("10.0.1.2"),
		"pod-b": netip.MustParseAddr("10.0.1.3"),
		"pod-c": netip.MustParseAddr("10.0.1.4"),
	}
	podCIDR = netip.MustParsePrefix("10.0.0.0/16")
)

type bed struct {
	node, client *kernel.NetNS
	pods         map[string]*kernel.NetNS
}

func newBed(t *testing.T) *bed {
	t.Helper()
	ktest.RequireFeature(t, kernel.FeatureIPVS)
	ktest.RequireFeature(t, kernel.FeatureDummy)
	ktest.RequireFeature(t, kernel.FeatureVeth)
	b := &bed{node: ktest.NewNetNS(t), client: ktest.NewNetNS(t), pods: map[string]*kernel.NetNS{}}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(b.node.EnsureBridge("br0", kernel.LinkAttrs{}, netip.PrefixFrom(bridgeIP, 24)))
	// The node forwards pod-to-pod replies in and out of br0: left on, it
	// would send the pods ICMP redirects, and a redirected pod would answer
	// its peer directly, around IPVS's reverse NAT. (A routed pod network,
	// one veth per pod, never triggers them.)
	for _, dev := range []string{"all", "br0"} {
		must(b.node.Sysctl("net/ipv4/conf/"+dev+"/send_redirects", "0"))
	}
	for name, ip := range podIPs {
		pod := ktest.NewNetNS(t)
		b.pods[name] = pod
		host := "veth-" + strings.TrimPrefix(name, "pod-")
		must(b.node.AddVeth(host, kernel.LinkAttrs{}, pod, "eth0", kernel.LinkAttrs{}))
		must(b.node.SetMaster(host, "br0"))
		must(b.node.LinkUp(host))
		must(pod.AddAddr("eth0", netip.PrefixFrom(ip, 32)))
		must(pod.LinkUp("eth0"))
		must(pod.ReplaceRoute(kernel.Route{Gateway: bridgeIP, Dev: "eth0", OnLink: true}))
		serve(t, name, pod, ip)
	}
	must(b.node.AddVeth("ext0", kernel.LinkAttrs{}, b.client, "eth0", kernel.LinkAttrs{}))
	must(b.node.AddAddr("ext0", netip.PrefixFrom(nodeIP, 24)))
	must(b.node.LinkUp("ext0"))
	must(b.client.AddAddr("eth0", netip.PrefixFrom(clientIP, 24)))
	must(b.client.AddAddr("eth0", netip.PrefixFrom(client2IP, 24)))
	must(b.client.LinkUp("eth0"))
	for _, dst := range []string{"10.1.0.0/16", "203.0.113.0/24"} {
		must(b.client.ReplaceRoute(kernel.Route{Dst: netip.MustParsePrefix(dst), Gateway: nodeIP}))
	}
	return b
}

// serve runs the pod's echo servers until the test ends.
func serve(t *testing.T, name string, pod *kernel.NetNS, ip netip.Addr) {
	var ln net.Listener
	var pc net.PacketConn
	err := pod.Do(func() (err error) {
		if ln, err = net.Listen("tcp4", netip.AddrPortFrom(ip, 8080).String()); err != nil {
			return err
		}
		pc, err = net.ListenPacket("udp4", netip.AddrPortFrom(ip, 5353).String())
		return err
	})
	if err != nil {
		t.Fatalf("echo server in %s: %v", name, err)
	}
	t.Cleanup(func() { ln.Close(); pc.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					if _, err := fmt.Fprintf(c, "%s %s\n", name, c.RemoteAddr()); err != nil {
						return
					}
				}
			}()
		}
	}()
	go func() {
		buf := make([]byte, 64)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(fmt.Appendf(nil, "%s %s", name, from), from)
		}
	}()
}

// conn is a client connection to the echo servers.
type conn struct {
	net.Conn
	r *bufio.Reader
}

// dial connects from ns (from src when valid) to addr within timeout.
func dial(ns *kernel.NetNS, src netip.Addr, addr string, timeout time.Duration) (*conn, error) {
	var c net.Conn
	err := ns.Do(func() (err error) {
		d := net.Dialer{Timeout: timeout}
		if src.IsValid() {
			d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
		}
		c, err = d.DialContext(context.Background(), "tcp4", addr)
		return err
	})
	if err != nil {
		return nil, err
	}
	return &conn{Conn: c, r: bufio.NewReader(c)}, nil
}

// ask sends a line and returns who answered and the client address it saw.
func (c *conn) ask() (pod string, seen netip.Addr, err error) {
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write([]byte("hi\n")); err != nil {
		return "", netip.Addr{}, err
	}
	line, err := c.r.ReadString('\n')
	if err != nil {
		return "", netip.Addr{}, err
	}
	pod, addr, _ := strings.Cut(strings.TrimSpace(line), " ")
	ap, err := netip.ParseAddrPort(addr)
	return pod, ap.Addr(), err
}

// once dials, asks once and closes.
func once(ns *kernel.NetNS, src netip.Addr, addr string) (pod string, seen netip.Addr, err error) {
	c, err := dial(ns, src, addr, 3*time.Second)
	if err != nil {
		return "", netip.Addr{}, err
	}
	defer c.Close()
	return c.ask()
}

// refused says a dial was answered with an ICMP error (REJECT);
// dropped says it timed out (DROP).
func refused(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EHOSTUNREACH)
}

func dropped(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// udpAsk sends one datagram from ns to addr and returns who answered.
func udpAsk(ns *kernel.NetNS, addr string) (string, error) {
	var c net.Conn
	if err := ns.Do(func() (err error) { c, err = net.Dial("udp4", addr); return err }); err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write([]byte("hi")); err != nil {
		return "", err
	}
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err != nil {
		return "", err
	}
	pod, _, _ := strings.Cut(string(buf[:n]), " ")
	return pod, nil
}

// Service and snapshot builders.

var node = model.Node{Name: "node-1", Zone: "zone-a", IPs: []netip.Addr{nodeIP}}

func ep(pod string, nodeName string) model.Endpoint {
	return model.Endpoint{IP: podIPs[pod], Port: 8080, NodeName: nodeName, Ready: true, Serving: true, Pod: "default/" + pod}
}

func svc(name, clusterIP string, eps ...model.Endpoint) model.ServicePort {
	return model.ServicePort{
		Name:       model.ServicePortName{Namespace: "default", Name: name, Protocol: model.ProtocolTCP},
		ClusterIPs: []netip.Addr{netip.MustParseAddr(clusterIP)}, Port: 80, Endpoints: eps,
	}
}

func desired(sps ...model.ServicePort) *proxy.Desired {
	cfg := proxy.Config{ClusterCIDRs: []netip.Prefix{podCIDR}}
	d := proxy.NewDesired(cfg, node)
	for _, sp := range sps {
		d.Services = append(d.Services, proxy.Resolve(sp, node))
	}
	slices.SortFunc(d.Services, func(a, b *proxy.Port) int { return strings.Compare(a.Name.String(), b.Name.String()) })
	return d
}

// diagnose describes the node when traffic fails: whether each pod answers
// directly, the node's neighbours and its IPVS table with counters.
func (b *bed) diagnose(t *testing.T) string {
	var out strings.Builder
	for name, ip := range podIPs {
		pod, _, err := once(b.node, netip.Addr{}, netip.AddrPortFrom(ip, 8080).String())
		fmt.Fprintf(&out, "node -> %s directly: %q %v\n", name, pod, err)
	}
	for _, cmd := range [][]string{{"ip", "neigh"}, {"ipvsadm", "-Ln", "--stats"}, {"ipvsadm", "-Lnc"}} {
		o, err := b.node.Run(t.Context(), "", cmd[0], cmd[1:]...)
		fmt.Fprintf(&out, "$ %s (%v)\n%s", strings.Join(cmd, " "), err, o)
	}
	return out.String()
}
