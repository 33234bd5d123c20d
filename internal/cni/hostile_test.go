package cni

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/ktest"
)

// These tests call the command handlers in-process with a test namespace as
// the node, to feed them what libcni and skel would refuse before the plugin
// ever saw it: the plugin must not rely on them.

func inProcess(t *testing.T) (*plugin, *kernel.NetNS) {
	t.Helper()
	ktest.RequireFeature(t, kernel.FeatureVeth)
	ktest.RequireFeature(t, kernel.FeatureBridge)
	node := ktest.NewNetNS(t)
	return newPlugin(func() (*kernel.NetNS, error) { return kernel.OpenNetNS(node.Path()) }), node
}

func bridgeConf(dataDir, block string) []byte {
	return fmt.Appendf(nil, `{"cniVersion":"1.1.0","name":"kdive","type":"kdive","mode":"bridge","podCIDR":%q,"mtu":1450,"dataDir":%q}`, block, dataDir)
}

func wantCNIError(t *testing.T, what string, err error, code uint, msg string) {
	t.Helper()
	var te *types.Error
	if !errors.As(err, &te) {
		t.Errorf("%s: %v is not a CNI error", what, err)
		return
	}
	if te.Code != code || !strings.Contains(te.Msg, msg) || !strings.HasPrefix(te.Msg, "kdive-cni: ") {
		t.Errorf("%s: code %d %q; want code %d containing %q", what, te.Code, te.Msg, code, msg)
	}
}

func TestHostileInput(t *testing.T) {
	p, node := inProcess(t)
	podNS := ktest.NewNetNS(t)
	dataDir := filepath.Join(t.TempDir(), "ipam")
	conf := bridgeConf(dataDir, "10.0.1.0/24")
	// A pod that already has an eth0 kdive-cni did not create.
	squatted := ktest.NewNetNS(t)
	if err := squatted.AddVeth("eth0", kernel.LinkAttrs{}, squatted, "other0", kernel.LinkAttrs{}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, id, ifname, netns string
		code                    uint
		msg                     string
	}{
		{"dotdot id", "../../etc", "eth0", podNS.Path(), types.ErrInvalidEnvironmentVariables, `CNI_CONTAINERID "../../etc"`},
		{"slash id", "a/b", "eth0", podNS.Path(), types.ErrInvalidEnvironmentVariables, `CNI_CONTAINERID "a/b"`},
		{"long id", strings.Repeat("a", 300), "eth0", podNS.Path(), types.ErrInvalidEnvironmentVariables, "300 characters long"},
		{"long ifname", "c1", "eth0-is-too-long", podNS.Path(), types.ErrInvalidEnvironmentVariables, `"eth0-is-too-long" is 16 bytes long; the kernel allows 15`},
		{"slash ifname", "c1", "a/b", podNS.Path(), types.ErrInvalidEnvironmentVariables, `CNI_IFNAME: interface name "a/b"`},
		{"not a netns", "c1", "eth0", "/etc/hostname", types.ErrInvalidNetNS, "/etc/hostname: not a network namespace"},
		{"relative netns", "c1", "eth0", "run/netns/x", types.ErrInvalidNetNS, `netns "run/netns/x": not an absolute path`},
		{"missing netns", "c1", "eth0", "/run/netns/kdive-no-such-ns", types.ErrInvalidNetNS, "/run/netns/kdive-no-such-ns: no such file"},
		{"node netns", "c1", "eth0", node.Path(), types.ErrInvalidNetNS, "the node's own network namespace"},
		{"taken ifname", "c1", "eth0", squatted.Path(), types.ErrInternal, "already has an interface eth0 (not created by kdive-cni)"},
	} {
		args := &skel.CmdArgs{ContainerID: tc.id, IfName: tc.ifname, Netns: tc.netns, StdinData: conf}
		err := p.cmdAdd(args)
		wantCNIError(t, tc.name, err, tc.code, tc.msg)
		if err != nil && !strings.Contains(err.Error(), "ADD "+tc.id+"/"+tc.ifname+": ") {
			t.Errorf("%s: error %q does not name the attachment", tc.name, err)
		}
	}
	if links, _ := node.Links(); len(links) != 1 { // lo
		t.Errorf("node has links after refused ADDs: %+v", links)
	}
	if l, err := squatted.LinkInfo("eth0"); err != nil || l.Type != "veth" {
		t.Errorf("the squatter's eth0 was touched: %+v, %v", l, err)
	}
	entries, _ := os.ReadDir(dataDir)
	for _, e := range entries {
		if e.Name() != "lock" && e.Name() != "last_reserved_ip" {
			t.Errorf("IPAM holds %s after refused ADDs", e.Name())
		}
	}
	// DEL of a pod whose netns is gone or never was one succeeds.
	for _, ns := range []string{"", "/run/netns/kdive-no-such-ns", "/etc/hostname"} {
		if err := p.cmdDel(&skel.CmdArgs{ContainerID: "c1", IfName: "eth0", Netns: ns, StdinData: conf}); err != nil {
			t.Errorf("DEL with netns %q: %v", ns, err)
		}
	}
}

// TestDelForgedPrevResult: a prevResult naming a node interface (the
// uplink) as the pod's host side must not make DEL delete it.
func TestDelForgedPrevResult(t *testing.T) {
	p, node := inProcess(t)
	if err := node.AddVeth("eth0", kernel.LinkAttrs{}, node, "eth1", kernel.LinkAttrs{}); err != nil {
		t.Fatal(err)
	}
	conf := fmt.Appendf(nil, `{"cniVersion":"1.1.0","name":"kdive","type":"kdive","mode":"bridge","podCIDR":"10.0.1.0/24","mtu":1450,"dataDir":%q,
	  "prevResult":{"cniVersion":"1.1.0","interfaces":[{"name":"eth0"},{"name":"eth0","sandbox":"/run/netns/x"}],"ips":[{"address":"10.0.1.2/24","interface":1}]}}`,
		t.TempDir())
	if err := p.cmdDel(&skel.CmdArgs{ContainerID: "c1", IfName: "eth0", StdinData: conf}); err != nil {
		t.Fatal(err)
	}
	if _, err := node.LinkInfo("eth0"); err != nil {
		t.Errorf("DEL deleted the node's eth0: %v", err)
	}
}

func TestStatusNotAvailable(t *testing.T) {
	p, _ := inProcess(t)
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	err := p.cmdStatus(&skel.CmdArgs{StdinData: bridgeConf(filepath.Join(file, "ipam"), "10.0.1.0/24")})
	wantCNIError(t, "STATUS with a data directory under a file", err, types.ErrPluginNotAvailable, "is not writable")

	// A /30 holds one pod.
	dataDir := t.TempDir()
	conf := bridgeConf(dataDir, "10.0.1.4/30")
	if err := p.cmdStatus(&skel.CmdArgs{StdinData: conf}); err != nil {
		t.Errorf("STATUS of an empty block: %v", err)
	}
	podNS := ktest.NewNetNS(t)
	if _, _, err := p.add(&skel.CmdArgs{ContainerID: "c1", IfName: "eth0", Netns: podNS.Path(), StdinData: conf}); err != nil {
		t.Fatal(err)
	}
	err = p.cmdStatus(&skel.CmdArgs{StdinData: conf})
	wantCNIError(t, "STATUS of a full block", err, types.ErrPluginNotAvailable, "pod block 10.0.1.4/30 is full (1 addresses in use)")
	other := ktest.NewNetNS(t)
	err = p.cmdAdd(&skel.CmdArgs{ContainerID: "c2", IfName: "eth0", Netns: other.Path(), StdinData: conf})
	wantCNIError(t, "ADD on a full block", err, types.ErrInternal, "pod block 10.0.1.4/30 is full (1 addresses in use)")
	if _, err := other.LinkInfo("eth0"); err == nil {
		t.Error("ADD on a full block created eth0")
	}
}
