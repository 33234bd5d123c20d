package cni_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/ktest"
	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/wait"
)

// A pod cannot send packets with a source address that is not its own.
// Pod A, attached by the plugin, gives its eth0 a second address (what a
// compromised pod can always do: it owns its namespace) and sends UDP
// datagrams from it to pod B and to the node; listeners in B and in the
// node record the source of everything that arrives. Addresses of the
// harness's plan (harness_test.go); the spoofed sources are an address of
// the block no pod holds and one outside the cluster (TEST-NET-2).

// udpRecorder records the source address of every datagram to port 9999.
type udpRecorder struct {
	mu   sync.Mutex
	srcs map[netip.Addr]int
	pc   net.PacketConn
}

func recordUDP(t *testing.T, ns *kernel.NetNS, addr netip.Addr) *udpRecorder {
	t.Helper()
	pc, err := ns.ListenPacket("udp", netip.AddrPortFrom(addr, 9999).String())
	if err != nil {
		t.Fatalf("listen in %s: %v", ns, err)
	}
	r := &udpRecorder{srcs: map[netip.Addr]int{}, pc: pc}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 64)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			ap, _ := netip.ParseAddrPort(from.String())
			r.mu.Lock()
			r.srcs[ap.Addr().Unmap()]++
			r.mu.Unlock()
		}
	}()
	return r
}

func (r *udpRecorder) got(src netip.Addr) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.srcs[src]
}

// sendFrom sends three datagrams from ns, bound to src, to dst:9999.
func sendFrom(t *testing.T, ns *kernel.NetNS, src, dst netip.Addr) {
	t.Helper()
	err := ns.Do(func() error {
		c, err := net.DialUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(src, 0)), net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, 9999)))
		if err != nil {
			return err
		}
		defer c.Close()
		for range 3 {
			if _, err := c.Write([]byte("spoof")); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("send from %s to %s: %v", src, dst, err)
	}
}

func checkAntiSpoof(t *testing.T, mode model.Interface) (leaked []string) {
	h := newHarness(t, mode)
	a, b := h.newPod("spoof-a"), h.newPod("spoof-b")
	h.mustAdd(a)
	h.mustAdd(b)
	aIP, bIP := a.ip(t), b.ip(t)
	atB := recordUDP(t, b.ns, netip.IPv4Unspecified())
	atNode := recordUDP(t, h.node, nodeAddr)

	// Its own address goes through: the paths work.
	sendFrom(t, a.ns, aIP, bIP)
	sendFrom(t, a.ns, aIP, nodeAddr)
	ownArrived := func(n int) func() error {
		return func() error {
			if b, node := atB.got(aIP), atNode.got(aIP); b < n || node < n {
				return fmt.Errorf("%s mode: %d of pod A's own datagrams at B, %d at the node; want %d", mode, b, node, n)
			}
			return nil
		}
	}
	ktest.Eventually(t, 3*time.Second, "pod A's own datagrams", ownArrived(1))

	spoofed := []netip.Addr{netip.MustParseAddr("10.0.1.200"), netip.MustParseAddr("198.51.100.7")}
	for _, src := range spoofed {
		if err := a.ns.AddAddr("eth0", netip.PrefixFrom(src, 32)); err != nil {
			t.Fatal(err)
		}
		sendFrom(t, a.ns, src, bIP)
		sendFrom(t, a.ns, src, nodeAddr)
	}
	// Own datagrams sent after the spoofed ones take the same path:
	// once they are in, so would the spoofed ones be.
	sendFrom(t, a.ns, aIP, bIP)
	sendFrom(t, a.ns, aIP, nodeAddr)
	ktest.Eventually(t, 3*time.Second, "pod A's own datagrams after the spoofed ones", ownArrived(2))
	for _, src := range spoofed {
		for what, r := range map[string]*udpRecorder{"pod B": atB, "the node": atNode} {
			if n := r.got(src); n > 0 {
				leaked = append(leaked, what+" got "+src.String())
			}
		}
	}
	return leaked
}

// Routed mode: the pod's /32 route points at its host-side veth, where
// ADD sets rp_filter=1 (strict): the kernel drops what arrives there from
// any other source, before forwarding or local delivery.
func TestRoutedPodCannotSpoof(t *testing.T) {
	if leaked := checkAntiSpoof(t, model.InterfaceRouted); len(leaked) > 0 {
		v, _ := os.ReadFile("/proc/sys/net/ipv4/conf/all/rp_filter")
		t.Errorf("a routed pod sent with a source that is not its own: %v (this host's conf.all.rp_filter, which new namespaces inherit: %s; 2 makes every interface loose)",
			leaked, strings.TrimSpace(string(v)))
	}
}

// Bridge mode: pods share kube-bridge's L2, where no reverse path check
// applies (pod to pod is switched, and the node's route back to any block
// address is the bridge itself); the plugin guards each bridge port with
// the bridge table kdive-antispoof (antispoof.go).
func TestBridgePodCannotSpoof(t *testing.T) {
	if leaked := checkAntiSpoof(t, model.InterfaceBridge); len(leaked) > 0 {
		t.Errorf("a bridge-mode pod sent with a source that is not its own: %v", leaked)
	}
}

// A bridge-mode pod that takes a neighbour's MAC neither gets its frames
// through nor teaches the bridge to send the neighbour's traffic to it.
func TestBridgePodCannotSpoofMAC(t *testing.T) {
	h := newHarness(t, model.InterfaceBridge)
	a, b := h.newPod("mac-a"), h.newPod("mac-b")
	h.mustAdd(a)
	h.mustAdd(b)
	aIP, bIP := a.ip(t), b.ip(t)
	bl, err := b.ns.LinkInfo("eth0")
	if err != nil {
		t.Fatal(err)
	}
	atNode := recordUDP(t, h.node, nodeAddr)
	atB := recordUDP(t, b.ns, netip.IPv4Unspecified())

	if _, err := a.ns.Run(context.Background(), "", "ip", "link", "set", "eth0", "address", bl.MAC.String()); err != nil {
		t.Fatalf("give pod A pod B's MAC: %v", err)
	}
	for range 3 {
		sendFrom(t, a.ns, aIP, nodeAddr)
		sendFrom(t, a.ns, aIP, bIP)
	}
	sendFrom(t, h.node, nodeAddr, bIP)
	err = wait.Until(context.Background(), 3*time.Second, 20*time.Millisecond, func() error {
		if atB.got(nodeAddr) == 0 {
			sendFrom(t, h.node, nodeAddr, bIP)
			return fmt.Errorf("none of the node's datagrams arrived")
		}
		return nil
	})
	if err != nil {
		fdb, ferr := h.node.Run(context.Background(), "", "bridge", "fdb", "show", "br", "kube-bridge")
		if ferr != nil {
			fdb = ferr.Error()
		}
		t.Errorf("after pod A took pod B's MAC %s, the node's datagrams no longer reach B (the bridge learned B's MAC on A's port?):\n%s", bl.MAC, fdb)
	}
	if n := atNode.got(aIP); n > 0 {
		t.Errorf("pod A with pod B's MAC got %d datagrams through to the node", n)
	}
	if n := atB.got(aIP); n > 0 {
		t.Errorf("pod A with pod B's MAC got %d datagrams through to pod B", n)
	}
}
