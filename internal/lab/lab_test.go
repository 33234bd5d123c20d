package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/ktest"
	"github.com/kdive/kdive/internal/testbin"
)

// These tests build real labs (root, network namespaces). Each uses its own
// lab name so they never touch a lab someone else runs.

func TestMain(m *testing.M) { os.Exit(testbin.Main(m)) }

// testBins are the kdive and kdive-cni the tests' labs run (testbin).
func testBins(t testing.TB) Binaries {
	t.Helper()
	return Binaries{Kdive: testbin.Path(t, testbin.Kdive), KdiveCNI: testbin.Path(t, testbin.KdiveCNI)}
}

func upTestLab(t *testing.T, name, text string) *State {
	t.Helper()
	ktest.RequireFeature(t, kernel.FeatureVeth)
	ktest.RequireFeature(t, kernel.FeatureBridge)
	ktest.RequireFeature(t, kernel.FeatureNFTables)
	downLeftover(t, name)
	p := mustPlan(t, name, text)
	s, err := Up(context.Background(), p, UpOptions{LabFile: []byte(text), Binaries: testBins(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := Down(name); err != nil && !errors.Is(err, ErrNoLab) {
			t.Errorf("down %s: %v", name, err)
		}
	})
	return s
}

// downLeftover takes down a lab of this name an earlier run left behind;
// there being none is what usually happens.
func downLeftover(tb testing.TB, name string) {
	tb.Helper()
	if err := Down(name); err != nil && !errors.Is(err, ErrNoLab) {
		tb.Fatalf("down %s, left by an earlier run: %v", name, err)
	}
}

func openNS(t *testing.T, name string) *kernel.NetNS {
	t.Helper()
	n, err := kernel.OpenNetNS(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

func TestUpDownLeavesNothing(t *testing.T) {
	s := upTestLab(t, "kdt-updown", testLab)
	p := s.Plan
	nss, err := kernel.ListNetNS(NetNSPrefix(p.Name))
	if err != nil {
		t.Fatal(err)
	}
	if len(nss) != 5+len(p.Objects.Pods) {
		t.Errorf("namespaces = %v, want router, external, 3 nodes and %d pods", nss, len(p.Objects.Pods))
	}
	if _, err := os.Stat(Dir(p.Name) + "/lab.json"); err != nil {
		t.Errorf("state file: %v", err)
	}
	// Links carry the lab's name.
	router := openNS(t, p.Router.NetNS)
	links, err := router.Links()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if l.Name != "lo" && !strings.HasPrefix(l.Alias, "kdive-lab:kdt-updown ") {
			t.Errorf("router link %s has alias %q", l.Name, l.Alias)
		}
	}
	// A second up of the same name is refused and breaks nothing.
	if _, err := Up(context.Background(), p, UpOptions{Binaries: testBins(t)}); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("second up: %v", err)
	}
	// A process started in a node (as agents and pods will be) dies with the lab.
	node := openNS(t, p.Nodes[0].NetNS)
	cmd := exec.Command("sleep", "60")
	if err := node.Start(cmd); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()

	if err := Down(p.Name); err != nil {
		t.Fatal(err)
	}
	select {
	case <-waited:
	case <-time.After(5 * time.Second):
		t.Error("process in a lab node survived lab down")
		_ = cmd.Process.Kill() // best effort: the test has failed
	}
	if nss, err := kernel.ListNetNS(NetNSPrefix(p.Name)); err != nil || len(nss) != 0 {
		t.Errorf("namespaces left after down: %v, %v", nss, err)
	}
	if _, err := os.Stat(Dir(p.Name)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state dir left after down: %v", err)
	}
	if err := Down(p.Name); !errors.Is(err, ErrNoLab) {
		t.Errorf("down of a lab that is gone: %v, want ErrNoLab", err)
	}
}

func TestFailedUpLeavesNothing(t *testing.T) {
	ktest.RequireFeature(t, kernel.FeatureVeth)
	name := "kdt-failup"
	downLeftover(t, name)
	p := mustPlan(t, name, testLab)
	p.Nodes[2].RouterPort = p.Nodes[1].RouterPort // the kernel refuses the second link
	if _, err := Up(context.Background(), p, UpOptions{Binaries: testBins(t)}); err == nil {
		t.Fatal("up with a clashing link name succeeded")
	}
	if nss, err := kernel.ListNetNS(NetNSPrefix(name)); err != nil || len(nss) != 0 {
		t.Errorf("namespaces left after failed up: %v, %v", nss, err)
	}
	if _, err := os.Stat(Dir(name)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state dir left after failed up: %v", err)
	}
}

func TestUnderlayTraffic(t *testing.T) {
	s := upTestLab(t, "kdt-traffic", testLab)
	p := s.Plan
	n1, n2, n3 := openNS(t, p.Nodes[0].NetNS), openNS(t, p.Nodes[1].NetNS), openNS(t, p.Nodes[2].NetNS)
	ext := openNS(t, p.External.NetNS)

	// Within a subnet (n1 -> n2, over the L2 bridge), across subnets
	// (n1 -> n3, through the router) and from the external client.
	for _, c := range []struct {
		name     string
		from, to *kernel.NetNS
		addr     string
	}{
		{"same subnet", n1, n2, "172.20.1.50:7001"},
		{"across subnets", n1, n3, "172.20.2.10:7002"},
		{"external to node", ext, n1, "172.20.1.10:7003"},
	} {
		if got, err := tcpEcho(c.from, c.to, c.addr); err != nil || got != "ping" {
			t.Errorf("%s (%s): got %q, %v", c.name, c.addr, got, err)
		}
	}
	_, before, err := RouterCounters(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}

	// A pod address on node 1 sending to node 3 across subnets: the router
	// drops it, like a VPC's source/destination check.
	podIP := netip.MustParseAddr("10.0.1.5")
	if err := n1.AddAddr("lo", netip.PrefixFrom(podIP, 32)); err != nil {
		t.Fatal(err)
	}
	got := udpDelivered(t, n1, n3, podIP, "172.20.2.10:7004")
	if got {
		t.Error("packet from a pod address crossed the router")
	}
	_, after, err := RouterCounters(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	if after.Packets <= before.Packets {
		t.Errorf("router dropped counter %d -> %d, want it to count the dropped packet", before.Packets, after.Packets)
	}
	// The same datagram from the node's own address goes through.
	if !udpDelivered(t, n1, n3, p.Nodes[0].IP, "172.20.2.10:7005") {
		t.Error("datagram from a node address did not cross the router")
	}
	// Spoofing another node's address from node 1 is dropped too.
	if err := n1.AddAddr("lo", netip.PrefixFrom(p.Nodes[1].IP, 32)); err != nil {
		t.Fatal(err)
	}
	if udpDelivered(t, n1, n3, p.Nodes[1].IP, "172.20.2.10:7006") {
		t.Error("datagram spoofing node n2's address crossed the router")
	}
	st := GetStatus(context.Background(), s)
	if st.State != "running" || st.Router.Dropped.Packets < after.Packets+1 || st.Router.Forwarded.Packets == 0 {
		t.Errorf("status = %s, router %+v", st.State, st.Router)
	}
}

func TestTwoLabsSideBySide(t *testing.T) {
	a := upTestLab(t, "kdt-side-a", testLab)
	b := upTestLab(t, "kdt-side-b", testLab)
	// Same addresses, separate worlds: each lab's n1 reaches its own n3.
	for _, s := range []*State{a, b} {
		n1, n3 := openNS(t, s.Plan.Nodes[0].NetNS), openNS(t, s.Plan.Nodes[2].NetNS)
		if got, err := tcpEcho(n1, n3, "172.20.2.10:7010"); err != nil || got != "ping" {
			t.Errorf("lab %s: %q, %v", s.Plan.Name, got, err)
		}
	}
	if err := Down("kdt-side-a"); err != nil {
		t.Fatal(err)
	}
	if st := GetStatus(context.Background(), b); st.State != "running" {
		t.Errorf("lab b after lab a went down: %s %v", st.State, st.Problems)
	}
	names, _ := Names()
	if !slices.Contains(names, "kdt-side-b") || slices.Contains(names, "kdt-side-a") {
		t.Errorf("labs = %v", names)
	}
}

func TestExecTarget(t *testing.T) {
	p := mustPlan(t, "kdt-exec", testLab)
	s := &State{Plan: p}
	for target, want := range map[string]string{
		"n2": "/run/netns/kdive-kdt-exec.n2", "router": "/run/netns/kdive-kdt-exec.router",
		"external": "/run/netns/kdive-kdt-exec.external",
	} {
		if got, err := ExecTarget(s, target); err != nil || got != want {
			t.Errorf("ExecTarget(%s) = %s, %v; want %s", target, got, err, want)
		}
	}
	for target, want := range map[string]string{
		"n9": "no node or pod", "web-1": "no network namespace (not attached)", "default/pinned": "no network namespace (not attached)",
	} {
		if _, err := ExecTarget(s, target); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ExecTarget(%s) error = %v, want %q", target, err, want)
		}
	}
}

// tcpEcho listens on addr in srv and dials it from cli.
func tcpEcho(cli, srv *kernel.NetNS, addr string) (string, error) {
	var ln net.Listener
	if err := srv.Do(func() (err error) { ln, err = net.Listen("tcp", addr); return err }); err != nil {
		return "", err
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.Copy(c, io.LimitReader(c, 4)) // the client reads what came back
	}()
	var c net.Conn
	if err := cli.Do(func() (err error) { c, err = net.DialTimeout("tcp", addr, 3*time.Second); return err }); err != nil {
		return "", err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(3 * time.Second)); err != nil {
		return "", err
	}
	if _, err := c.Write([]byte("ping")); err != nil {
		return "", err
	}
	b, err := io.ReadAll(c)
	return string(b), err
}

// udpDelivered sends one datagram from src in cli to addr in srv and tells
// whether it arrived.
func udpDelivered(t *testing.T, cli, srv *kernel.NetNS, src netip.Addr, addr string) bool {
	t.Helper()
	var pc net.PacketConn
	if err := srv.Do(func() (err error) { pc, err = net.ListenPacket("udp", addr); return err }); err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	var out net.PacketConn
	if err := cli.Do(func() (err error) { out, err = net.ListenPacket("udp", src.String()+":0"); return err }); err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	dst, _ := net.ResolveUDPAddr("udp", addr)
	if _, err := out.WriteTo([]byte(fmt.Sprintf("from %s", src)), dst); err != nil {
		t.Fatal(err)
	}
	if err := pc.SetReadDeadline(time.Now().Add(500 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	_, _, err := pc.ReadFrom(buf)
	return err == nil
}
