package cni_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/kdive/kdive/internal/cni"
	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/ktest"
	"github.com/kdive/kdive/internal/model"
)

func pm(hostPort, containerPort any, proto, hostIP string) map[string]any {
	m := map[string]any{"hostPort": hostPort, "containerPort": containerPort}
	if proto != "-" {
		m["protocol"] = proto
	}
	if hostIP != "-" {
		m["hostIP"] = hostIP
	}
	return m
}

func withPortMappings(t *testing.T, list any) []byte {
	return withKey(t, "runtimeConfig", map[string]any{"portMappings": list})
}

func TestPortMappings(t *testing.T) {
	hip := netip.MustParseAddr("192.0.2.1")
	for _, tc := range []struct {
		name string
		list any
		want []cni.PortMapping
	}{
		{"none", nil, nil},
		{"empty", []any{}, nil},
		{"tcp", []any{pm(8080, 80, "tcp", "")}, []cni.PortMapping{{Protocol: "tcp", HostPort: 8080, ContainerPort: 80}}},
		{"defaults to tcp", []any{pm(1, 65535, "-", "-")}, []cni.PortMapping{{Protocol: "tcp", HostPort: 1, ContainerPort: 65535}}},
		{"any case", []any{pm(53, 53, "UDP", ""), pm(9, 9, "Sctp", "")},
			[]cni.PortMapping{{Protocol: "udp", HostPort: 53, ContainerPort: 53}, {Protocol: "sctp", HostPort: 9, ContainerPort: 9}}},
		{"host IP", []any{pm(53, 5353, "udp", "192.0.2.1")}, []cni.PortMapping{{HostIP: hip, Protocol: "udp", HostPort: 53, ContainerPort: 5353}}},
		{"mapped host IP", []any{pm(53, 53, "udp", "::ffff:192.0.2.1")}, []cni.PortMapping{{HostIP: hip, Protocol: "udp", HostPort: 53, ContainerPort: 53}}},
		{"0.0.0.0 is every address", []any{pm(80, 80, "tcp", "0.0.0.0")}, []cni.PortMapping{{Protocol: "tcp", HostPort: 80, ContainerPort: 80}}},
		{"IPv6 host IPs skipped", []any{pm(80, 80, "tcp", "2001:db8::1"), pm(81, 81, "tcp", "::"), pm(82, 82, "tcp", "")},
			[]cni.PortMapping{{Protocol: "tcp", HostPort: 82, ContainerPort: 82}}},
		{"same port, other protocol or host IP", []any{pm(80, 80, "tcp", ""), pm(80, 80, "udp", ""), pm(80, 81, "tcp", "192.0.2.1")},
			[]cni.PortMapping{{Protocol: "tcp", HostPort: 80, ContainerPort: 80}, {Protocol: "udp", HostPort: 80, ContainerPort: 80},
				{HostIP: hip, Protocol: "tcp", HostPort: 80, ContainerPort: 81}}},
		{"unused keys ignored", []any{map[string]any{"hostPort": 80, "containerPort": 80, "name": "http"}},
			[]cni.PortMapping{{Protocol: "tcp", HostPort: 80, ContainerPort: 80}}},
		// containerd's go-cni has no JSON tags; the portmap plugin's
		// encoding/json matches keys in any case.
		{"keys as containerd writes them", []any{map[string]any{"HostPort": 54323, "ContainerPort": 8080, "Protocol": "TCP", "HostIP": "192.0.2.1"}},
			[]cni.PortMapping{{HostIP: hip, Protocol: "tcp", HostPort: 54323, ContainerPort: 8080}}},
		{"the exact key wins", []any{map[string]any{"hostPort": 80, "HostPort": 81, "containerPort": 80}},
			[]cni.PortMapping{{Protocol: "tcp", HostPort: 80, ContainerPort: 80}}},
		{"loopback host IP", []any{pm(54323, 8080, "tcp", "127.0.0.1")},
			[]cni.PortMapping{{HostIP: netip.MustParseAddr("127.0.0.1"), Protocol: "tcp", HostPort: 54323, ContainerPort: 8080}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conf := []byte(routedConf)
			if tc.list != nil {
				conf = withPortMappings(t, tc.list)
			}
			c, err := cni.ParseConfig(conf)
			if err != nil {
				t.Fatal(err)
			}
			got, err := c.PortMappings()
			if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Errorf("PortMappings of %s = %+v, %v; want %+v", conf, got, err, tc.want)
			}
		})
	}
}

func TestPortMappingsErrors(t *testing.T) {
	ok := pm(8080, 80, "tcp", "")
	for _, tc := range []struct {
		name string
		list any
		msg  string
	}{
		{"host port high", []any{ok, pm(70000, 80, "tcp", "")}, "runtimeConfig.portMappings[1].hostPort: 70000 is out of range 1-65535"},
		{"host port zero", []any{pm(0, 80, "tcp", "")}, "runtimeConfig.portMappings[0].hostPort: 0 is out of range 1-65535"},
		{"container port negative", []any{pm(80, -1, "tcp", "")}, "runtimeConfig.portMappings[0].containerPort: -1 is out of range 1-65535"},
		{"container port high", []any{pm(80, 65536, "tcp", "")}, "runtimeConfig.portMappings[0].containerPort: 65536 is out of range 1-65535"},
		{"container port missing", []any{map[string]any{"hostPort": 80}}, "runtimeConfig.portMappings[0].containerPort: required"},
		{"host port missing", []any{map[string]any{"containerPort": 80}}, "runtimeConfig.portMappings[0].hostPort: required"},
		{"port string", []any{pm("80", 80, "tcp", "")}, `runtimeConfig.portMappings[0].hostPort: "80" is not an integer`},
		{"port fraction", []any{pm(80.5, 80, "tcp", "")}, "runtimeConfig.portMappings[0].hostPort: 80.5 is not an integer"},
		{"protocol", []any{ok, pm(8081, 80, "udp", ""), pm(80, 80, "icmp", "")}, `runtimeConfig.portMappings[2].protocol: "icmp" is not tcp, udp or sctp`},
		{"protocol number", []any{map[string]any{"hostPort": 80, "containerPort": 80, "protocol": 6}},
			"runtimeConfig.portMappings[0].protocol: 6 is not a string"},
		{"host IP", []any{pm(80, 80, "tcp", "node-1")}, `runtimeConfig.portMappings[0].hostIP: "node-1" is not an IP address`},
		{"host IP zone", []any{pm(80, 80, "tcp", "fe80::1%eth0")}, `runtimeConfig.portMappings[0].hostIP: "fe80::1%eth0" is not an IP address`},
		{"host IP multicast", []any{pm(80, 80, "tcp", "224.0.0.1")}, "runtimeConfig.portMappings[0].hostIP: 224.0.0.1 is not a unicast address"},
		{"host IP not a string", []any{map[string]any{"hostPort": 80, "containerPort": 80, "hostIP": []any{"192.0.2.1"}}},
			`runtimeConfig.portMappings[0].hostIP: ["192.0.2.1"] is not a string`},
		{"duplicate", []any{ok, pm(8080, 81, "TCP", "")},
			"runtimeConfig.portMappings[1]: hostPort 8080/tcp on every node address is already mapped by runtimeConfig.portMappings[0]"},
		{"duplicate host IP", []any{pm(53, 53, "udp", "192.0.2.1"), pm(53, 54, "udp", "::ffff:192.0.2.1")},
			"runtimeConfig.portMappings[1]: hostPort 53/udp on 192.0.2.1 is already mapped by runtimeConfig.portMappings[0]"},
		{"not a list", map[string]any{"hostPort": 80}, "runtimeConfig.portMappings: must be a list of mappings"},
		{"not an object", []any{ok, 80}, "runtimeConfig.portMappings[1]: must be an object, got 80"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conf := withPortMappings(t, tc.list)
			// ParseConfig accepts it: DEL and GC must work for such a pod.
			c, err := cni.ParseConfig(conf)
			if err != nil {
				t.Fatalf("ParseConfig(%s): %v", conf, err)
			}
			got, err := c.PortMappings()
			var te *types.Error
			if !errors.As(err, &te) {
				t.Fatalf("PortMappings of %s = %+v, %v; want a *types.Error", conf, got, err)
			}
			if te.Code != types.ErrInvalidNetworkConfig || !strings.Contains(te.Msg, tc.msg) {
				t.Errorf("PortMappings of %s: code %d %q; want code %d containing %q", conf, te.Code, te.Msg, types.ErrInvalidNetworkConfig, tc.msg)
			}
		})
	}
}

// Address plan, added to the harness's: a client namespace reaches the node
// over a veth, the node at 198.51.100.1/24 (TEST-NET-2), the client at .2
// with its default route via the node.
var (
	clientNodeAddr = netip.MustParseAddr("198.51.100.1")
	clientAddr     = netip.MustParseAddr("198.51.100.2")
)

func (h *harness) newClient() *kernel.NetNS {
	h.t.Helper()
	c := ktest.NewNetNS(h.t)
	for _, step := range []func() error{
		func() error { return h.node.AddVeth("cl0", kernel.LinkAttrs{}, c, "eth0", kernel.LinkAttrs{}) },
		func() error { return h.node.AddAddr("cl0", netip.PrefixFrom(clientNodeAddr, 24)) },
		func() error { return h.node.LinkUp("cl0") },
		func() error { return c.AddAddr("eth0", netip.PrefixFrom(clientAddr, 24)) },
		func() error { return c.LinkUp("eth0") },
		func() error { return c.ReplaceRoute(kernel.Route{Gateway: clientNodeAddr, Dev: "eth0"}) },
	} {
		if err := step(); err != nil {
			h.t.Fatal(err)
		}
	}
	return c
}

func withPorts(p *pod, ms ...map[string]any) *pod {
	p.rt.CapabilityArgs = map[string]any{"portMappings": ms}
	return p
}

// serveTCP answers every connection to port in ns with the client's
// address as the server sees it.
func serveTCP(t *testing.T, ns *kernel.NetNS, port int) {
	t.Helper()
	var ln net.Listener
	if err := ns.Do(func() (err error) { ln, err = net.Listen("tcp4", fmt.Sprintf(":%d", port)); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "%s\n", c.RemoteAddr())
			c.Close()
		}
	}()
}

// serveUDP answers every datagram to port in ns with its source address.
func serveUDP(t *testing.T, ns *kernel.NetNS, port int) {
	t.Helper()
	pc, err := ns.ListenPacket("udp4", fmt.Sprintf(":%d", port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 512)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo([]byte(from.String()), from) // a reply lost shows at the client
		}
	}()
}

// ask connects from ns to addr (tcp or udp) and returns the answer: the
// client's address as the server saw it.
func ask(ns *kernel.NetNS, network, addr string) (string, error) {
	c, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	conn, err := ns.DialContext(c, network, addr)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(2 * time.Second)); err != nil {
		return "", err
	}
	if network == "udp" {
		if _, err := conn.Write([]byte("who am I?")); err != nil {
			return "", err
		}
		buf := make([]byte, 512)
		n, err := conn.Read(buf)
		return string(buf[:n]), err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	return strings.TrimSpace(line), err
}

// askFrom asks over TCP from the local address src.
func askFrom(ns *kernel.NetNS, src netip.Addr, addr string) (string, error) {
	var line string
	err := ns.Do(func() error {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: src.AsSlice()}, Timeout: 2 * time.Second}
		conn, err := d.Dial("tcp", addr)
		if err != nil {
			return err
		}
		defer conn.Close()
		if err := conn.SetDeadline(time.Now().Add(2 * time.Second)); err != nil {
			return err
		}
		line, err = bufio.NewReader(conn).ReadString('\n')
		line = strings.TrimSpace(line)
		return err
	})
	return line, err
}

// mustAsk fails the test unless the answer comes from wantSrc (any source
// but notSrc when wantSrc is invalid).
func mustAsk(t *testing.T, what string, ns *kernel.NetNS, network, addr string, wantSrc, notSrc netip.Addr) {
	t.Helper()
	got, err := ask(ns, network, addr)
	if err != nil {
		t.Errorf("%s: %s %s: %v", what, network, addr, err)
		return
	}
	ap, err := netip.ParseAddrPort(got)
	switch {
	case err != nil:
		t.Errorf("%s: %s %s answered %q", what, network, addr, got)
	case wantSrc.IsValid() && ap.Addr() != wantSrc:
		t.Errorf("%s: %s %s: the pod saw the client as %s, want %s", what, network, addr, ap.Addr(), wantSrc)
	case ap.Addr() == notSrc:
		t.Errorf("%s: %s %s: the pod saw the client as %s", what, network, addr, ap.Addr())
	}
}

// mustBeRefused fails the test unless the node itself refuses the
// connection (TCP reset, ICMP port unreachable): nothing forwarded it.
func mustBeRefused(t *testing.T, what string, ns *kernel.NetNS, network, addr string) {
	t.Helper()
	if got, err := ask(ns, network, addr); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("%s: %s %s answered %q, %v; want connection refused by the node", what, network, addr, got, err)
	}
}

// hostPortTable is `nft list table ip kdive-hostport` in the node, "" when
// there is no such table.
func (h *harness) hostPortTable() string {
	h.t.Helper()
	out, err := h.node.Run(ctx(h.t), "", "nft", "list", "table", "ip", "kdive-hostport")
	if err != nil {
		if strings.Contains(err.Error(), "No such file or directory") {
			return ""
		}
		h.t.Fatal(err)
	}
	return out
}

// hostPortStates lists the state files.
func (h *harness) hostPortStates() []string {
	h.t.Helper()
	names, err := filepath.Glob(filepath.Join(h.dataDir, "hostports", "*.json"))
	if err != nil {
		h.t.Fatal(err)
	}
	for i, n := range names {
		names[i] = filepath.Base(n)
		if st, err := os.Stat(n); err != nil || st.Mode().Perm() != 0o600 {
			h.t.Errorf("state file %s: %v; want mode 0600", n, err)
		}
	}
	return names
}

func TestHostPortsThroughLibcni(t *testing.T) {
	for _, mode := range []model.Interface{model.InterfaceRouted, model.InterfaceBridge} {
		t.Run(string(mode), func(t *testing.T) { hostPorts(t, mode) })
	}
}

func hostPorts(t *testing.T, mode model.Interface) {
	ktest.RequireFeature(t, kernel.FeatureNFTables)
	h := newHarness(t, mode)
	client := h.newClient()
	a := withPorts(h.newPod("pod-a"),
		map[string]any{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""},
		map[string]any{"hostPort": 5353, "containerPort": 53, "protocol": "UDP", "hostIP": clientNodeAddr.String()},
		map[string]any{"HostPort": 8090, "ContainerPort": 80, "Protocol": "TCP", "HostIP": "127.0.0.1"})
	h.mustAdd(a)
	ip := a.ip(t)
	serveTCP(t, a.ns, 80)
	serveUDP(t, a.ns, 53)

	table := h.hostPortTable()
	for _, want := range []string{
		fmt.Sprintf("tcp . 8080 : %s . 80", ip),
		fmt.Sprintf("%s . udp . 5353 : %s . 53", clientNodeAddr, ip),
		fmt.Sprintf("%s . %s", ip, ip),
	} {
		if !strings.Contains(table, want) {
			t.Errorf("hostPort table lacks %q:\n%s", want, table)
		}
	}
	if s := h.hostPortStates(); len(s) != 1 || s[0] != "pod-a@eth0.json" {
		t.Errorf("state files %v, want [pod-a@eth0.json]", s)
	}

	node8080 := netip.AddrPortFrom(nodeAddr, 8080).String()
	// From outside the node: the pod sees the client's own address.
	mustAsk(t, "client to node:8080", client, "tcp", node8080, clientAddr, netip.Addr{})
	mustAsk(t, "client to the other node address:8080", client, "tcp", netip.AddrPortFrom(clientNodeAddr, 8080).String(), clientAddr, netip.Addr{})
	mustAsk(t, "client to hostIP:5353/udp", client, "udp", netip.AddrPortFrom(clientNodeAddr, 5353).String(), clientAddr, netip.Addr{})
	mustBeRefused(t, "5353/udp is bound to its hostIP only", client, "udp", netip.AddrPortFrom(nodeAddr, 5353).String())
	// From the node itself (output chain), but never through loopback
	// unless the hostIP is loopback, and then only from a node address.
	mustAsk(t, "node to node:8080", h.node, "tcp", node8080, netip.Addr{}, ip)
	mustBeRefused(t, "node to 127.0.0.1:8080", h.node, "tcp", "127.0.0.1:8080")
	if got, err := askFrom(h.node, nodeAddr, "127.0.0.1:8090"); err != nil || !strings.HasPrefix(got, nodeAddr.String()+":") {
		t.Errorf("node from %s to hostIP 127.0.0.1:8090: %q, %v; want the pod to see the node address", nodeAddr, got, err)
	}
	if got, err := askFrom(client, clientAddr, netip.AddrPortFrom(nodeAddr, 8090).String()); err == nil {
		t.Errorf("client to node:8090 (hostIP 127.0.0.1 only) answered %q", got)
	}
	// Hairpin: the pod reaches itself through the node, masqueraded.
	mustAsk(t, "pod to its own hostPort", a.ns, "tcp", node8080, netip.Addr{}, ip)

	// A second pod cannot take the port, and leaves nothing behind.
	b := withPorts(h.newPod("pod-b"), map[string]any{"hostPort": 8081, "containerPort": 80}, map[string]any{"hostPort": 8080, "containerPort": 8080})
	_, err := h.add(b)
	if te := cniErr(t, err); !strings.Contains(te.Msg, "hostPort 8080/tcp is already taken") || !strings.Contains(te.Msg, "pod-a/eth0") {
		t.Errorf("ADD of a second pod on 8080: code %d %q", te.Code, te.Msg)
	}
	if v := h.ourVeths(); len(v) != 1 {
		t.Errorf("veths after the refused ADD: %v", v)
	}
	if l, _ := h.store().List(); len(l) != 1 || l[0].Attachment.ContainerID != "pod-a" {
		t.Errorf("IPAM after the refused ADD: %v", l)
	}
	if table := h.hostPortTable(); strings.Contains(table, "8081") || !strings.Contains(table, fmt.Sprintf("tcp . 8080 : %s . 80", ip)) {
		t.Errorf("hostPort table after the refused ADD:\n%s", table)
	}
	if s := h.hostPortStates(); len(s) != 1 {
		t.Errorf("state files after the refused ADD: %v", s)
	}
	if err := h.del(b); err != nil {
		t.Errorf("DEL of the refused pod: %v", err)
	}
	mustAsk(t, "client to node:8080 after the refused ADD", client, "tcp", node8080, clientAddr, netip.Addr{})

	// CHECK sees a missing element; ADD again restores it.
	if err := h.check(a); err != nil {
		t.Errorf("CHECK of a healthy pod: %v", err)
	}
	if _, err := h.node.Run(ctx(t), "", "nft", "delete", "element", "ip", "kdive-hostport", "hostports", "{ tcp . 8080 }"); err != nil {
		t.Fatal(err)
	}
	if err := h.check(a); err == nil || !strings.Contains(err.Error(), "hostPort 8080/tcp -> :80 leads nowhere") {
		t.Errorf("CHECK without the 8080 entry: %v", err)
	}
	h.mustAdd(a)
	if err := h.check(a); err != nil {
		t.Errorf("CHECK after ADD again: %v", err)
	}
	mustAsk(t, "client to node:8080 after ADD again", client, "tcp", node8080, clientAddr, netip.Addr{})

	for i := range 2 {
		if err := h.del(a); err != nil {
			t.Errorf("DEL #%d: %v", i+1, err)
		}
	}
	out, err := h.node.Run(ctx(t), "", "nft", "-j", "list", "map", "ip", "kdive-hostport", "hostports")
	if err != nil || strings.Contains(out, `"elem"`) {
		t.Errorf("hostports map after DEL: %s, %v", out, err)
	}
	if table := h.hostPortTable(); strings.Contains(table, "elements") {
		t.Errorf("elements left after DEL:\n%s", table)
	}
	if s := h.hostPortStates(); len(s) != 0 {
		t.Errorf("state files left after DEL: %v", s)
	}
	mustBeRefused(t, "client to node:8080 after DEL", client, "tcp", node8080)

	for i := range 2 {
		if err := cni.CleanupHostPorts(ctx(t), h.node); err != nil {
			t.Errorf("CleanupHostPorts #%d: %v", i+1, err)
		}
	}
	if table := h.hostPortTable(); table != "" {
		t.Errorf("table left after CleanupHostPorts:\n%s", table)
	}
}

// TestHostPortsGC: GC removes the hostPorts of attachments it is not told
// to keep, and entries leading to addresses no one holds.
func TestHostPortsGC(t *testing.T) {
	ktest.RequireFeature(t, kernel.FeatureNFTables)
	h := newHarness(t, model.InterfaceRouted)
	keep := withPorts(h.newPod("keep"), map[string]any{"hostPort": 8080, "containerPort": 80})
	gone := withPorts(h.newPod("gone"), map[string]any{"hostPort": 8081, "containerPort": 80})
	h.mustAdd(keep)
	h.mustAdd(gone)
	// An entry whose state was lost, leading to an address no one holds.
	if err := h.node.Nft(ctx(t), "add element ip kdive-hostport hostports { udp . 9999 : 10.0.1.200 . 99 }\n"); err != nil {
		t.Fatal(err)
	}
	fresh := newCNIConfig(t)
	err := h.inNode(func() error {
		return fresh.GCNetworkList(ctx(t), h.list, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{{ContainerID: "keep", IfName: "eth0"}}})
	})
	if err != nil {
		t.Fatalf("GC: %v", err)
	}
	table := h.hostPortTable()
	if want := fmt.Sprintf("tcp . 8080 : %s . 80", keep.ip(t)); !strings.Contains(table, want) {
		t.Errorf("GC removed the kept pod's %q:\n%s", want, table)
	}
	for _, gonePart := range []string{"8081", "9999", gone.ip(t).String()} {
		if strings.Contains(table, gonePart) {
			t.Errorf("GC left %q:\n%s", gonePart, table)
		}
	}
	if s := h.hostPortStates(); len(s) != 1 || s[0] != "keep@eth0.json" {
		t.Errorf("state files after GC: %v", s)
	}
	if l, _ := h.store().List(); len(l) != 1 || l[0].Attachment.ContainerID != "keep" {
		t.Errorf("IPAM after GC: %v", l)
	}
	if err := h.check(keep); err != nil {
		t.Errorf("CHECK of the kept pod: %v", err)
	}
}

// TestHostPortsBadMapping: a bad mapping fails ADD before anything is
// built, and DEL of that pod still works.
func TestHostPortsBadMapping(t *testing.T) {
	ktest.RequireFeature(t, kernel.FeatureNFTables)
	h := newHarness(t, model.InterfaceRouted)
	good := withPorts(h.newPod("good"), map[string]any{"hostPort": 8080, "containerPort": 80})
	h.mustAdd(good)
	before := h.hostPortTable()
	bad := withPorts(h.newPod("bad"),
		map[string]any{"hostPort": 8081, "containerPort": 80, "protocol": "tcp"},
		map[string]any{"hostPort": 70000, "containerPort": 80, "protocol": "tcp"})
	_, err := h.add(bad)
	te := cniErr(t, err)
	if te.Code != types.ErrInvalidNetworkConfig || !strings.Contains(te.Msg, "runtimeConfig.portMappings[1].hostPort: 70000 is out of range 1-65535") {
		t.Errorf("ADD with hostPort 70000: code %d %q", te.Code, te.Msg)
	}
	if v := h.ourVeths(); len(v) != 1 {
		t.Errorf("veths after the failed ADD: %v", v)
	}
	if _, err := bad.ns.LinkInfo("eth0"); err == nil {
		t.Error("the failed ADD left eth0 in the pod")
	}
	if l, _ := h.store().List(); len(l) != 1 || l[0].Attachment.ContainerID != "good" {
		t.Errorf("IPAM after the failed ADD: %v", l)
	}
	if after := h.hostPortTable(); after != before {
		t.Errorf("the failed ADD changed the hostPort table:\n%s\nwas\n%s", after, before)
	}
	if s := h.hostPortStates(); len(s) != 1 {
		t.Errorf("state files after the failed ADD: %v", s)
	}
	if err := h.del(bad); err != nil {
		t.Errorf("DEL of the pod with a bad mapping: %v", err)
	}
}
