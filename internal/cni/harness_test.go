package cni_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/kdive/kdive/internal/cni"
	"github.com/kdive/kdive/internal/cni/ipam"
	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/ktest"
	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/testbin"
)

// Address plan of these tests (nothing leaves the namespaces they create):
//   - the node's pod block 10.0.1.0/24: pods from .2, the bridge at .1;
//   - the node's uplink 192.0.2.1/24 (TEST-NET-1) on a veth whose peer
//     stays in the node, with a default route via 192.0.2.254, which no one
//     answers: routed mode's proxy ARP needs a node route covering
//     169.254.1.1, as on any real node.

var (
	nodeAddr = netip.MustParseAddr("192.0.2.1")
	block    = netip.MustParsePrefix("10.0.1.0/24")
)

func TestMain(m *testing.M) { os.Exit(testbin.Main(m)) }

// pluginDir is a CNI_PATH holding kdive-cni (testbin) as the plugin type
// "kdive", which is what a runtime execs.
func pluginDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.Symlink(testbin.Path(t, testbin.KdiveCNI), filepath.Join(dir, cni.PluginType)); err != nil {
		t.Fatal(err)
	}
	return dir
}

// harness is a node namespace with kdive's conflist, driven through libcni
// exactly as a container runtime drives it.
type harness struct {
	t       *testing.T
	node    *kernel.NetNS
	cni     *libcni.CNIConfig
	list    *libcni.NetworkConfigList
	dataDir string
	mtu     int
}

func newHarness(t *testing.T, mode model.Interface) *harness {
	t.Helper()
	ktest.RequireFeature(t, kernel.FeatureVeth)
	if mode == model.InterfaceBridge {
		ktest.RequireFeature(t, kernel.FeatureBridge)
	}
	h := &harness{t: t, node: ktest.NewNetNS(t), dataDir: filepath.Join(t.TempDir(), "ipam"), mtu: 1450}
	h.uplink(true)
	if err := h.node.Sysctl("net.ipv4.ip_forward", "1"); err != nil {
		t.Fatal(err)
	}
	data, err := cni.NewConfList(cni.ConfListOptions{Mode: mode, PodCIDR: block, MTU: h.mtu, DataDir: h.dataDir})
	if err != nil {
		t.Fatal(err)
	}
	h.loadConfList(data)
	h.cni = newCNIConfig(t)
	return h
}

// newCNIConfig is a libcni client with its own result cache. The exec is
// given up front: libcni sets its default lazily, which races when one
// CNIConfig runs calls concurrently (as a runtime, or the lab, does).
func newCNIConfig(t *testing.T) *libcni.CNIConfig {
	exec := &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: os.Stderr}, PluginDecoder: version.PluginDecoder{}}
	return libcni.NewCNIConfigWithCacheDir([]string{pluginDir(t)}, t.TempDir(), exec)
}

// uplink gives the node its address, and the default route when withDefault.
func (h *harness) uplink(withDefault bool) {
	h.t.Helper()
	n := h.node
	if err := n.AddVeth("up0", kernel.LinkAttrs{}, n, "up1", kernel.LinkAttrs{}); err != nil {
		h.t.Fatal(err)
	}
	for _, step := range []error{
		n.AddAddr("up0", netip.PrefixFrom(nodeAddr, 24)), n.LinkUp("up0"), n.LinkUp("up1"),
	} {
		if step != nil {
			h.t.Fatal(step)
		}
	}
	if withDefault {
		if err := n.ReplaceRoute(kernel.Route{Gateway: netip.MustParseAddr("192.0.2.254"), Dev: "up0"}); err != nil {
			h.t.Fatal(err)
		}
	}
}

// loadConfList writes data into a fresh config dir and loads it as a
// runtime does.
func (h *harness) loadConfList(data []byte) {
	h.t.Helper()
	dir := filepath.Join(h.t.TempDir(), "net.d")
	if err := cni.WriteConfList(dir, data); err != nil {
		h.t.Fatal(err)
	}
	list, err := libcni.LoadConfList(dir, cni.NetworkName)
	if err != nil {
		h.t.Fatal(err)
	}
	h.list = list
}

// pod is one pod sandbox: its netns and the runtime's view of it.
type pod struct {
	ns  *kernel.NetNS
	rt  *libcni.RuntimeConf
	res *types100.Result
}

func (h *harness) newPod(id string) *pod {
	ns := ktest.NewNetNS(h.t)
	return &pod{ns: ns, rt: &libcni.RuntimeConf{ContainerID: id, NetNS: ns.Path(), IfName: "eth0"}}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

// inNode runs fn (libcni calls, which exec the plugin) inside the node
// namespace, so the plugin's host side is the node, never the test's root
// namespace.
func (h *harness) inNode(fn func() error) error { return h.node.Do(fn) }

func (h *harness) add(p *pod) (*types100.Result, error) {
	var res types.Result
	err := h.inNode(func() (err error) {
		res, err = h.cni.AddNetworkList(ctx(h.t), h.list, p.rt)
		return err
	})
	if err != nil {
		return nil, err
	}
	r, err := types100.NewResultFromResult(res)
	if err != nil {
		return nil, err
	}
	p.res = r
	return r, nil
}

func (h *harness) mustAdd(p *pod) *types100.Result {
	h.t.Helper()
	r, err := h.add(p)
	if err != nil {
		h.t.Fatalf("ADD %s: %v", p.rt.ContainerID, err)
	}
	return r
}

func (h *harness) check(p *pod) error {
	return h.inNode(func() error { return h.cni.CheckNetworkList(ctx(h.t), h.list, p.rt) })
}

func (h *harness) del(p *pod) error {
	return h.inNode(func() error { return h.cni.DelNetworkList(ctx(h.t), h.list, p.rt) })
}

func (h *harness) status() error {
	return h.inNode(func() error { return h.cni.GetStatusNetworkList(ctx(h.t), h.list) })
}

// podIP is the pod's address from its ADD result.
func (p *pod) ip(t *testing.T) netip.Addr {
	t.Helper()
	if p.res == nil || len(p.res.IPs) != 1 {
		t.Fatalf("pod %s has no single address in its result: %+v", p.rt.ContainerID, p.res)
	}
	a, _ := netip.AddrFromSlice(p.res.IPs[0].Address.IP)
	return a.Unmap()
}

func (h *harness) store() *ipam.Store {
	s, err := ipam.New(h.dataDir, block)
	if err != nil {
		h.t.Fatal(err)
	}
	return s
}

// ourVeths lists the node's veths carrying kdive-cni's alias.
func (h *harness) ourVeths() []string {
	h.t.Helper()
	links, err := h.node.Links()
	if err != nil {
		h.t.Fatal(err)
	}
	var names []string
	for _, l := range links {
		if l.Type == "veth" && strings.HasPrefix(l.Alias, "kdive-cni:") {
			names = append(names, l.Name)
		}
	}
	return names
}

// connect opens a TCP connection from inside netns from to addr:port,
// served by a listener inside netns to, and checks the server sees the
// expected source address.
func connect(t *testing.T, from, to *kernel.NetNS, addr, wantSrc netip.Addr) {
	t.Helper()
	var ln net.Listener
	if err := to.Do(func() (err error) {
		ln, err = net.Listen("tcp", netip.AddrPortFrom(addr, 0).String())
		return err
	}); err != nil {
		t.Fatalf("listen on %s in %s: %v", addr, to, err)
	}
	defer ln.Close()
	srcs := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			srcs <- err.Error()
			return
		}
		srcs <- c.RemoteAddr().String()
		c.Close()
	}()
	err := from.Do(func() error {
		c, err := net.DialTimeout("tcp", ln.Addr().String(), 3*time.Second)
		if err != nil {
			return err
		}
		return c.Close()
	})
	if err != nil {
		t.Fatalf("connect from %s to %s: %v", from, ln.Addr(), err)
	}
	src := <-srcs
	if ap, err := netip.ParseAddrPort(src); err != nil || ap.Addr() != wantSrc {
		t.Errorf("connection from %s to %s arrived from %s, want %s", from, ln.Addr(), src, wantSrc)
	}
}

// cniErr returns err's CNI error, failing the test when it is not one.
func cniErr(t *testing.T, err error) *types.Error {
	t.Helper()
	var te *types.Error
	if !errors.As(err, &te) {
		t.Fatalf("error %v (%T) is not a CNI error", err, err)
	}
	return te
}
