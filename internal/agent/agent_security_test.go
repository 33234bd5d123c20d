package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/ktest"
	"github.com/kdive/kdive/internal/model"
)

// What the agent exposes, and to whom, in nftables and iptables modes:
// NodePorts only on nodePortAddresses and on localhost only when
// localhostNodePorts says so (CVE-2020-8558: a neighbour on the node's L2
// must never reach a service bound to 127.0.0.1), loadBalancerSourceRanges
// on LoadBalancer IPs, and the health and metrics servers where the
// configuration binds them.
//
// Address plan (all inside the test's namespaces):
//
//	lan    192.0.2.20/24  --- eth0 192.0.2.10/24    node n1 (InternalIP; nodePortAddresses 192.0.2.0/24)
//	other  198.51.100.20/24 - eth1 198.51.100.10/24 node (a second address, outside nodePortAddresses)
//	pod    10.99.0.5/24   --- pod0 10.99.0.1/24     node (the endpoint, answering its client's address on :8080)
//
// Service web: LoadBalancer, cluster IP 10.96.0.10, NodePort 30080,
// LoadBalancer IP 203.0.113.10 (both clients route it to the node),
// loadBalancerSourceRanges [192.0.2.0/24]: lan is inside, other outside.
// Service local: LoadBalancer with externalTrafficPolicy Local, cluster
// IP 10.96.0.11, NodePort 30081, health check node port 32000, the same
// endpoint (on n1, so the health check answers 200).
type exposureBed struct {
	node, lan, other, pod *kernel.NetNS
	client                kubernetes.Interface
	dir                   string
	logs                  *logBuffer // the latest agent's log
}

func newExposureBed(t *testing.T) *exposureBed {
	t.Helper()
	b := &exposureBed{node: ktest.NewNetNS(t), lan: ktest.NewNetNS(t), other: ktest.NewNetNS(t), pod: ktest.NewNetNS(t), dir: t.TempDir()}
	link := func(peer *kernel.NetNS, dev, nodeAddr, peerAddr string) {
		mustNoErr(t, b.node.AddVeth(dev, kernel.LinkAttrs{MTU: 1500}, peer, "eth0", kernel.LinkAttrs{}))
		mustNoErr(t, b.node.AddAddr(dev, netip.MustParsePrefix(nodeAddr)))
		mustNoErr(t, peer.AddAddr("eth0", netip.MustParsePrefix(peerAddr)))
		mustNoErr(t, b.node.LinkUp(dev))
		mustNoErr(t, peer.LinkUp("eth0"))
		mustNoErr(t, peer.ReplaceRoute(kernel.Route{Gateway: netip.MustParsePrefix(nodeAddr).Addr(), Dev: "eth0"}))
	}
	link(b.lan, "eth0", "192.0.2.10/24", "192.0.2.20/24")
	link(b.other, "eth1", "198.51.100.10/24", "198.51.100.20/24")
	link(b.pod, "pod0", "10.99.0.1/24", "10.99.0.5/24")
	mustNoErr(t, b.node.Sysctl("net.ipv4.ip_forward", "1"))
	mustNoErr(t, b.node.ReplaceRoute(kernel.Route{Gateway: netip.MustParseAddr("192.0.2.20"), Dev: "eth0"}))
	serveClientAddr(t, b.pod, ":8080")

	ready := true
	n1 := testNode("n1", "192.0.2.10", "10.244.1.0/24")
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default"},
		Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeLoadBalancer, ClusterIP: "10.96.0.10",
			Ports:                    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), NodePort: 30080, Protocol: corev1.ProtocolTCP}},
			LoadBalancerSourceRanges: []string{"192.0.2.0/24"},
		},
		Status: corev1.ServiceStatus{LoadBalancer: corev1.LoadBalancerStatus{Ingress: []corev1.LoadBalancerIngress{{IP: "203.0.113.10"}}}},
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "web-1", Namespace: "default", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr(int32(8080)), Protocol: ptr(corev1.ProtocolTCP)}},
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"10.99.0.5"}, NodeName: ptr("n2"),
			Conditions: discoveryv1.EndpointConditions{Ready: &ready}}},
	}
	local := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "local", Namespace: "default"},
		Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeLoadBalancer, ClusterIP: "10.96.0.11",
			Ports:                 []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), NodePort: 30081, Protocol: corev1.ProtocolTCP}},
			ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal, HealthCheckNodePort: 32000,
		},
	}
	localSlice := slice.DeepCopy()
	localSlice.Name, localSlice.Labels[discoveryv1.LabelServiceName] = "local-1", "local"
	localSlice.Endpoints[0].NodeName = ptr("n1")
	b.client = fake.NewSimpleClientset(&n1, svc, slice, local, localSlice)
	return b
}

// serveClientAddr answers every TCP connection with the client's address.
func serveClientAddr(t *testing.T, ns *kernel.NetNS, addr string) {
	var ln net.Listener
	mustNoErr(t, ns.Do(func() (err error) { ln, err = net.Listen("tcp", addr); return err }))
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
			fmt.Fprintln(c, host)
			c.Close()
		}
	}()
}

// config is the agent's configuration on this bed; edit adjusts it.
func (b *exposureBed) config(t *testing.T, mode string, edit func(*Configuration)) *Configuration {
	cfg := &Configuration{
		NodeName:   "n1",
		PodNetwork: model.PodNetwork{Interface: model.InterfaceRouted, Encap: model.EncapNone, EncapPolicy: model.EncapAlways},
		CNI:        CNIConfig{ConfDir: filepath.Join(b.dir, "net.d"), DataDir: filepath.Join(b.dir, "ipam")},
		Proxy:      ProxyConfig{Mode: mode, ClusterCIDR: "10.244.0.0/16", NodePortAddresses: []string{"192.0.2.0/24"}},
		SyncPeriod: metav1.Duration{Duration: 30 * time.Second}, MinSyncPeriod: metav1.Duration{Duration: 10 * time.Millisecond},
	}
	if edit != nil {
		edit(cfg)
	}
	cfg.Default()
	mustNoErr(t, cfg.Validate())
	return cfg
}

// runAgent runs an agent in the node until the returned stop is called
// (or the test ends), once its first sync is done.
func (b *exposureBed) runAgent(t *testing.T, cfg *Configuration) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	b.logs = &logBuffer{}
	log := slog.New(logHandler{b: b.logs})
	go func() { done <- New(Options{Config: cfg, NetNS: b.node, Client: b.client, Logger: log}).Run(ctx) }()
	stopped := false
	stop = func() {
		if !stopped {
			stopped = true
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		}
	}
	t.Cleanup(stop)
	// /healthz answers 200 once this agent's first sync succeeded (the
	// rules of an earlier agent answer NodePorts before that).
	healthz := "http://" + strings.Replace(cfg.HealthzBindAddress, "0.0.0.0", "127.0.0.1", 1) + "/healthz"
	ktest.Eventually(t, 15*time.Second, healthz+" to answer 200", func() error {
		if code, err := exposureGet(b.node, healthz); code != http.StatusOK {
			return fmt.Errorf("status %d, %v", code, err)
		}
		return nil
	})
	return stop
}

// tcpAsk connects from ns to addr and returns the first line the server
// sends.
func exposureAsk(ns *kernel.NetNS, addr string, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := ns.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

// httpStatus GETs url from inside ns.
func exposureGet(ns *kernel.NetNS, url string) (int, error) {
	c := http.Client{Timeout: time.Second, Transport: &http.Transport{DialContext: ns.DialContext}}
	resp, err := c.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// localnetAttacker makes lan send packets for 127.0.0.0/8 to the node, as
// an attacker on the node's L2 can (CVE-2020-8558): lan's own loopback
// routes go, and 127.0.0.0/8 is routed to the node. The node's replies
// (from 127.0.0.1) do not make it back into lan's sockets, so the test
// counts what arrives at a UDP socket the node binds to 127.0.0.1:10999,
// a stand-in for any service bound to localhost (the metrics server,
// a kubelet's): a datagram that arrives is a SYN that would.
func (b *exposureBed) localnetAttacker(t *testing.T) *udpSink {
	t.Helper()
	ctx := context.Background()
	for _, argv := range [][]string{
		{"sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1"},
		{"sysctl", "-qw", "net.ipv4.conf.eth0.route_localnet=1"},
		{"ip", "route", "del", "local", "127.0.0.1", "dev", "lo", "table", "local"},
		{"ip", "route", "del", "local", "127.0.0.0/8", "dev", "lo", "table", "local"},
		{"ip", "route", "add", "127.0.0.0/8", "via", "192.0.2.10", "dev", "eth0"},
	} {
		if out, err := b.lan.Run(ctx, "", argv[0], argv[1:]...); err != nil {
			t.Fatalf("%v: %v %s", argv, err, out)
		}
	}
	if r, err := b.lan.RouteTo(netip.MustParseAddr("127.0.0.1")); err != nil || r.Gateway != netip.MustParseAddr("192.0.2.10") {
		t.Fatalf("lan routes 127.0.0.1 as %+v, %v; want via the node", r, err)
	}
	return newUDPSink(t, b.node, "127.0.0.1:10999", "192.0.2.10:10998")
}

// udpSink counts the datagrams arriving at a UDP socket (sink); a second
// socket on the node's own address (marker) tells when they have all been
// delivered or dropped.
type udpSink struct {
	sink, marker net.PacketConn
}

func newUDPSink(t *testing.T, ns *kernel.NetNS, addr, markerAddr string) *udpSink {
	t.Helper()
	s := &udpSink{}
	var err error
	s.sink, err = ns.ListenPacket("udp", addr)
	mustNoErr(t, err)
	t.Cleanup(func() { s.sink.Close() })
	s.marker, err = ns.ListenPacket("udp", markerAddr)
	mustNoErr(t, err)
	t.Cleanup(func() { s.marker.Close() })
	return s
}

// arrivals sends three datagrams from lan to the sink's address, then one
// to the marker's, and returns how many of the three the sink got. The
// marker crosses the same link behind them, so once it is in, each of them
// has been delivered or dropped.
func (s *udpSink) arrivals(t *testing.T, from *kernel.NetNS) int {
	t.Helper()
	send := func(to string, n int) error {
		c, err := net.Dial("udp", to)
		if err != nil {
			return err
		}
		defer c.Close()
		for range n {
			if _, err := c.Write([]byte("localnet")); err != nil {
				return err
			}
		}
		return nil
	}
	mustNoErr(t, from.Do(func() error {
		return errors.Join(send(s.sink.LocalAddr().String(), 3), send(s.marker.LocalAddr().String(), 1))
	}))
	mustNoErr(t, s.marker.SetReadDeadline(time.Now().Add(5*time.Second)))
	if _, _, err := s.marker.ReadFrom(make([]byte, 64)); err != nil {
		t.Fatalf("the marker datagram sent behind them to %s: %v", s.marker.LocalAddr(), err)
	}
	// Count what is queued, without waiting for more.
	raw, err := s.sink.(syscall.Conn).SyscallConn()
	mustNoErr(t, err)
	n := 0
	var recvErr error
	err = raw.Control(func(fd uintptr) {
		for {
			if _, _, err := unix.Recvfrom(int(fd), make([]byte, 64), unix.MSG_DONTWAIT); err != nil {
				if !errors.Is(err, unix.EAGAIN) {
					recvErr = err
				}
				return
			}
			n++
		}
	})
	mustNoErr(t, errors.Join(err, recvErr))
	return n
}

// withLocalnet runs fn with the node's route_localnet forced on, then
// restores it: the positive control that shows the attacker's packets
// do reach 127.0.0.1 where nothing stops them.
func (b *exposureBed) withLocalnet(t *testing.T, fn func()) {
	t.Helper()
	old, err := b.node.ReadSysctl("net.ipv4.conf.all.route_localnet")
	mustNoErr(t, err)
	mustNoErr(t, b.node.Sysctl("net.ipv4.conf.all.route_localnet", "1"))
	defer func() { mustNoErr(t, b.node.Sysctl("net.ipv4.conf.all.route_localnet", old)) }()
	fn()
}

func TestExposure(t *testing.T) {
	ktest.RequireFeature(t, kernel.FeatureNFTables)
	ktest.RequireFeature(t, kernel.FeatureVeth)
	for _, mode := range []string{"nftables", "iptables"} {
		t.Run(mode, func(t *testing.T) {
			if _, err := exec.LookPath("iptables-restore"); mode == "iptables" && err != nil {
				t.Skipf("iptables-restore is not installed: %v", err)
			}
			checkExposure(t, mode)
		})
	}
}

func checkExposure(t *testing.T, mode string) {
	b := newExposureBed(t)
	stop := b.runAgent(t, b.config(t, mode, nil))
	b.checkDefaults(t, mode)
	sink := b.localnetAttacker(t)
	t.Run("a neighbour cannot reach 127.0.0.1 (CVE-2020-8558)", func(t *testing.T) {
		if n := sink.arrivals(t, b.lan); n > 0 {
			t.Errorf("%d datagrams from a neighbour reached a socket bound to 127.0.0.1", n)
		}
		wantNoAnswer(t, b.lan, "127.0.0.1:10249")
		// Control: with route_localnet on and no guard, they arrive (the
		// kernel's martian check is what keeps them out here).
		b.withLocalnet(t, func() {
			if n := sink.arrivals(t, b.lan); n == 0 {
				t.Errorf("control: with route_localnet=1 and no guard the neighbour's datagrams do not arrive either; the attack is not reproduced")
			}
		})
	})
	stop()

	// localhostNodePorts on; health on 127.0.0.1 only, metrics on the
	// node's address: each server answers where it is bound and nowhere
	// else, and the neighbour still reaches nothing on 127.0.0.1. Without
	// nodePortAddresses (NodePorts on the primary IP, 192.0.2.10, as
	// before) the health check node port answers on every address.
	stop = b.runAgent(t, b.config(t, mode, func(c *Configuration) {
		c.Proxy.LocalhostNodePorts, c.Proxy.NodePortAddresses = true, nil
		c.HealthzBindAddress, c.MetricsBindAddress = "127.0.0.1:10256", "192.0.2.10:10249"
	}))
	b.checkLocalhost(t, mode, sink)
	t.Run("health check node port on every address without nodePortAddresses", func(t *testing.T) {
		b.wantHealthCheck(t, b.lan, "192.0.2.10", true)
		b.wantHealthCheck(t, b.other, "198.51.100.10", true)
		b.wantHealthCheck(t, b.node, "127.0.0.1", true)
	})
	stop()

	// A health check port another process holds on the node's address:
	// reported and retried, but the Services are programmed and /healthz
	// turns 200 (runAgent waits for it), as upstream.
	t.Run("a health check port that cannot be bound does not fail the sync", func(t *testing.T) {
		var held net.Listener
		mustNoErr(t, b.node.Do(func() (err error) { held, err = net.Listen("tcp", "192.0.2.10:32000"); return err }))
		defer held.Close()
		start := time.Now()
		stop := b.runAgent(t, b.config(t, mode, nil))
		defer stop()
		wantAnswer(t, b.lan, "192.0.2.10:30080")
		if recs := b.logs.since(start, "health check node ports"); len(recs) == 0 {
			t.Errorf("no log says the health check port could not be bound:\n%s", b.logs.dump())
		}
	})
	if mode == "iptables" {
		// Control: the agent gone and its guard flushed, the same
		// datagrams arrive (route_localnet is still on).
		// The chain is in the agent's flavour only: flushing it in the
		// other fails.
		var flushed []string
		for _, tool := range []string{"iptables-nft", "iptables-legacy"} {
			if _, err := b.node.Run(context.Background(), "", tool, "-w", "-F", "KUBE-PROXY-FIREWALL"); err == nil {
				flushed = append(flushed, tool)
			}
		}
		if len(flushed) == 0 {
			t.Fatal("KUBE-PROXY-FIREWALL flushed by neither iptables-nft nor iptables-legacy")
		}
		if n := sink.arrivals(t, b.lan); n == 0 {
			t.Errorf("control: without the guard the neighbour's datagrams do not arrive; the guard's test proves nothing")
		}
	}
}

func wantNoAnswer(t *testing.T, from *kernel.NetNS, addr string) {
	t.Helper()
	if got, err := exposureAsk(from, addr, 700*time.Millisecond); err == nil {
		t.Errorf("%s answered (endpoint saw %s); want no answer", addr, got)
	}
}

func wantAnswer(t *testing.T, from *kernel.NetNS, addr string) {
	t.Helper()
	if _, err := exposureAsk(from, addr, 2*time.Second); err != nil {
		t.Errorf("%s: %v; want an answer", addr, err)
	}
}

// wantHealthCheck checks whether the health check node port of service
// local answers (200, naming the service) on ip from ns.
func (b *exposureBed) wantHealthCheck(t *testing.T, from *kernel.NetNS, ip string, answers bool) {
	t.Helper()
	url := "http://" + net.JoinHostPort(ip, "32000") + "/"
	code, err := exposureGet(from, url)
	switch {
	case answers && code != http.StatusOK:
		t.Errorf("health check node port %s: %d %v; want 200", url, code, err)
	case !answers && err == nil:
		t.Errorf("health check node port %s answered %d; want no answer (not a nodePortAddress)", url, code)
	}
}

// checkDefaults checks NodePorts, source ranges and the servers under the
// default configuration (nodePortAddresses 192.0.2.0/24).
func (b *exposureBed) checkDefaults(t *testing.T, mode string) {
	t.Run("NodePorts only on nodePortAddresses", func(t *testing.T) {
		wantAnswer(t, b.node, "192.0.2.10:30080")
		wantAnswer(t, b.lan, "192.0.2.10:30080")
		wantNoAnswer(t, b.node, "198.51.100.10:30080")
		wantNoAnswer(t, b.other, "198.51.100.10:30080")
	})
	t.Run("no NodePort on localhost by default", func(t *testing.T) {
		wantNoAnswer(t, b.node, "127.0.0.1:30080")
		if v, _ := b.node.ReadSysctl("net.ipv4.conf.all.route_localnet"); v != "0" {
			t.Errorf("route_localnet is %s without localhostNodePorts; want 0", v)
		}
	})
	t.Run("loadBalancerSourceRanges on the LoadBalancer IP", func(t *testing.T) {
		wantAnswer(t, b.lan, "203.0.113.10:80")
		if got, err := exposureAsk(b.other, "203.0.113.10:80", 700*time.Millisecond); !isTimeout(err) {
			t.Errorf("a client outside the source ranges to the LoadBalancer IP: %q, %v; want its packets dropped (a timeout)", got, err)
		}
	})
	t.Run("source ranges do not cover the NodePort (documented, as kube-proxy)", func(t *testing.T) {
		// kube-proxy filters only traffic to the LoadBalancer IPs; the
		// service's NodePort stays open to anyone who reaches a
		// nodePortAddress. kdive does the same (docs/reliability.md).
		if got, err := exposureAsk(b.other, "192.0.2.10:30080", 2*time.Second); err != nil {
			t.Errorf("a client outside the source ranges to the NodePort: %v; kdive documents that NodePorts are not filtered (if this changed, update the doc)", err)
		} else {
			t.Logf("NodePort 192.0.2.10:30080 answers a client outside loadBalancerSourceRanges (endpoint saw %s), as documented", got)
		}
	})
	t.Run("metrics on 127.0.0.1, health on every address by default", func(t *testing.T) {
		if code, err := exposureGet(b.node, "http://127.0.0.1:10249/metrics"); code != 200 {
			t.Errorf("metrics on 127.0.0.1 from the node: %d %v", code, err)
		}
		// kube-proxy's /proxyMode, on the same port (upstream's e2e asks it).
		c := http.Client{Timeout: time.Second, Transport: &http.Transport{DialContext: b.node.DialContext}}
		if resp, err := c.Get("http://127.0.0.1:10249/proxyMode"); err != nil {
			t.Errorf("/proxyMode: %v", err)
		} else {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(body) != mode {
				t.Errorf("/proxyMode: %d %q, want 200 %q", resp.StatusCode, body, mode)
			}
		}
		if code, err := exposureGet(b.lan, "http://192.0.2.10:10249/metrics"); err == nil {
			t.Errorf("metrics answered on the node's address: %d; want them on 127.0.0.1 only", code)
		}
		if code, err := exposureGet(b.lan, "http://192.0.2.10:10256/healthz"); code != 200 {
			t.Errorf("healthz on the node's address: %d %v", code, err)
		}
	})
	t.Run("health check node port only on nodePortAddresses", func(t *testing.T) {
		// As kube-proxy: bound to the node IPs within nodePortAddresses,
		// not to another node address nor to 127.0.0.1.
		b.wantHealthCheck(t, b.lan, "192.0.2.10", true)
		b.wantHealthCheck(t, b.node, "192.0.2.10", true)
		b.wantHealthCheck(t, b.other, "198.51.100.10", false)
		b.wantHealthCheck(t, b.node, "198.51.100.10", false)
		b.wantHealthCheck(t, b.node, "127.0.0.1", false)
	})
}

// checkLocalhost checks localhostNodePorts and servers bound elsewhere
// than by default.
func (b *exposureBed) checkLocalhost(t *testing.T, mode string, sink *udpSink) {
	t.Run("localhostNodePorts", func(t *testing.T) {
		const warning = "proxy.localhostNodePorts is supported in iptables mode only; ignored in nftables mode"
		if mode == "nftables" {
			// As upstream's nftables mode: not supported. The agent says
			// so once and programs no 127.0.0.1 NodePort (the table has
			// no guard against CVE-2020-8558, so route_localnet stays off).
			if n := len(b.logs.since(time.Time{}, warning)); n != 1 {
				t.Errorf("the agent logged %q %d times; want once\n%s", warning, n, b.logs.dump())
			}
			table, err := b.node.Run(context.Background(), "", "nft", "list", "table", "ip", "kdive-proxy")
			if err != nil || strings.Contains(table, "127.0.0.1") {
				t.Errorf("nftables mode with localhostNodePorts: the table has 127.0.0.1 NodePort elements (%v):\n%s", err, table)
			}
			if v, _ := b.node.ReadSysctl("net.ipv4.conf.all.route_localnet"); v != "0" {
				t.Errorf("route_localnet is %s in nftables mode, which has no guard against CVE-2020-8558", v)
			}
			wantNoAnswer(t, b.node, "127.0.0.1:30080")
		} else {
			if strings.Contains(b.logs.dump(), "localhostNodePorts is supported") {
				t.Errorf("iptables mode warned about localhostNodePorts, which it supports:\n%s", b.logs.dump())
			}
			if got, err := exposureAsk(b.node, "127.0.0.1:30080", 2*time.Second); err != nil {
				save, _ := b.node.Run(context.Background(), "", "iptables-save")
				t.Errorf("127.0.0.1:30080 from the node with localhostNodePorts: %v\n%s", err, save)
			} else {
				t.Logf("127.0.0.1:30080 answers from the node (endpoint saw %s)", got)
			}
		}
		// The neighbour still reaches nothing bound to 127.0.0.1: in
		// iptables mode route_localnet is on and KUBE-PROXY-FIREWALL's
		// "block incoming localnet connections" rule (upstream's fix)
		// drops them; in nftables mode route_localnet stays off.
		if n := sink.arrivals(t, b.lan); n > 0 {
			t.Errorf("%d datagrams from a neighbour reached a socket bound to 127.0.0.1 with localhostNodePorts", n)
		}
		wantNoAnswer(t, b.lan, "127.0.0.1:10256")
	})
	t.Run("servers bound where the config says", func(t *testing.T) {
		if code, err := exposureGet(b.node, "http://127.0.0.1:10256/healthz"); code != 200 {
			t.Errorf("healthz on 127.0.0.1: %d %v", code, err)
		}
		if code, err := exposureGet(b.lan, "http://192.0.2.10:10256/healthz"); err == nil {
			t.Errorf("healthz bound to 127.0.0.1 answered on the node's address: %d", code)
		}
		if code, err := exposureGet(b.lan, "http://192.0.2.10:10249/metrics"); code != 200 {
			t.Errorf("metrics on the node's address: %d %v", code, err)
		}
		if code, err := exposureGet(b.node, "http://127.0.0.1:10249/metrics"); err == nil {
			t.Errorf("metrics bound to 192.0.2.10 answered on 127.0.0.1: %d", code)
		}
	})
}

// The agent's record of its proxy mode (DATADIR/proxy-mode) is replaced
// atomically like every other state file: never half-written, mode 0644,
// and a symlink planted in its place is replaced, not followed.
func TestProxyModeFileSafe(t *testing.T) {
	dir := t.TempDir()
	victim := filepath.Join(t.TempDir(), "victim")
	mustNoErr(t, os.WriteFile(victim, []byte("keep"), 0o600))
	mustNoErr(t, os.Symlink(victim, filepath.Join(dir, "proxy-mode")))
	if !switchedModes(dir, "iptables") {
		t.Error("a symlink where the mode is recorded counted as the same mode")
	}
	if b, _ := os.ReadFile(victim); string(b) != "keep" {
		t.Errorf("the mode was written through the planted symlink: victim now %q", b)
	}
	info, err := os.Lstat(filepath.Join(dir, "proxy-mode"))
	if err != nil || !info.Mode().IsRegular() || info.Mode().Perm() != 0o644 {
		t.Errorf("proxy-mode: %v, %v; want a regular file, mode 0644", info.Mode(), err)
	}
	if switchedModes(dir, "iptables") {
		t.Error("the same mode again counted as a switch")
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("state dir holds %v; want only proxy-mode", entries)
	}
}
