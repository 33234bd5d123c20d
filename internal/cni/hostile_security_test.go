package cni

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/kdive/kdive/internal/kernel/ktest"
)

// What TestHostileInput (hostile_test.go) does not cover: the commands
// other than ADD, and netns paths that name the node's own namespace in
// another spelling. The container id and interface name become file
// names in the state directory (DATADIR/10.0.1.N holds "id\nifname",
// DATADIR/hostports/ID@IFNAME.json a pod's hostPorts), so an id that could
// climb out of it would let DEL remove, or ADD write, files elsewhere.

// TestHostileIDsEveryCommand: DEL, CHECK and GC refuse (or ignore) ids and
// interface names that would escape the state directory, and touch no file
// outside it.
func TestHostileIDsEveryCommand(t *testing.T) {
	p, _ := inProcess(t)
	podNS := ktest.NewNetNS(t)
	root := t.TempDir()
	dataDir := filepath.Join(root, "state", "ipam")
	conf := bridgeConf(dataDir, "10.0.1.0/24")
	// Canaries where a hostile id would lead DEL's hostPort cleanup:
	// DATADIR/hostports/ID@IFNAME.json with ID climbing out.
	canaries := []string{filepath.Join(root, "victim@eth0.json"), filepath.Join(root, "state", "victim@eth0.json")}
	if err := os.MkdirAll(filepath.Join(root, "state"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, c := range canaries {
		if err := os.WriteFile(c, []byte("keep"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	prev := `,"prevResult":{"cniVersion":"1.1.0","interfaces":[{"name":"eth0","sandbox":"/x"}],"ips":[{"address":"10.0.1.2/24","interface":0}]}}`
	checkConf := []byte(strings.TrimSuffix(string(conf), "}") + prev)
	for _, tc := range []struct{ id, ifname, msg string }{
		{"../../victim", "eth0", `CNI_CONTAINERID "../../victim"`},
		{"../victim", "eth0", `CNI_CONTAINERID "../victim"`},
		{"..", "eth0", `CNI_CONTAINERID ".."`},
		{".hidden", "eth0", `CNI_CONTAINERID ".hidden"`},
		{"a@b", "eth0", `CNI_CONTAINERID "a@b"`},
		{"c1", "..", `CNI_IFNAME: interface name ".." is not allowed`},
		{"c1", ".", `CNI_IFNAME: interface name "." is not allowed`},
		{"c1", "../x", `CNI_IFNAME: interface name "../x"`},
	} {
		for _, cmd := range []struct {
			name string
			fn   func(*skel.CmdArgs) error
			conf []byte
		}{{"ADD", p.cmdAdd, conf}, {"DEL", p.cmdDel, conf}, {"CHECK", p.cmdCheck, checkConf}} {
			err := cmd.fn(&skel.CmdArgs{ContainerID: tc.id, IfName: tc.ifname, Netns: podNS.Path(), StdinData: cmd.conf})
			wantCNIError(t, fmt.Sprintf("%s %q/%q", cmd.name, tc.id, tc.ifname), err, types.ErrInvalidEnvironmentVariables, tc.msg)
		}
	}
	// GC's list of valid attachments only says what to keep: hostile
	// entries in it name no file.
	gcConf := []byte(strings.TrimSuffix(string(conf), "}") +
		`,"cni.dev/valid-attachments":[{"containerID":"../../victim","ifname":"eth0"},{"containerID":"x","ifname":"../../../victim"}]}`)
	if err := p.cmdGC(&skel.CmdArgs{StdinData: gcConf}); err != nil {
		t.Errorf("GC with hostile valid attachments: %v", err)
	}
	for _, c := range canaries {
		if b, err := os.ReadFile(c); err != nil || string(b) != "keep" {
			t.Errorf("%s outside the state directory was touched: %q, %v", c, b, err)
		}
	}
	if entries, _ := os.ReadDir(filepath.Join(dataDir, "hostports")); len(entries) > 1 { // the lock
		t.Errorf("hostPort state after refused commands: %v", entries)
	}
}

// TestNetNSPathsToTheNode: the node's own namespace is refused however the
// path spells it (through a symlink, with ".."), and a namespace file of
// another kind, a directory or a regular file is not a network namespace.
// (/proc/self/ns/net, the plugin's own namespace, is the node's when a
// runtime runs the plugin; in this in-process test it would be the test
// host's, so it is not tried here: hostile_test.go's "node netns" case is
// the same check.)
func TestNetNSPathsToTheNode(t *testing.T) {
	p, node := inProcess(t)
	conf := bridgeConf(filepath.Join(t.TempDir(), "ipam"), "10.0.1.0/24")
	link := filepath.Join(t.TempDir(), "ns-link")
	if err := os.Symlink(node.Path(), link); err != nil {
		t.Fatal(err)
	}
	dotdot := filepath.Join(filepath.Dir(node.Path()), "..", filepath.Base(filepath.Dir(node.Path())), filepath.Base(node.Path()))
	for _, tc := range []struct {
		name, netns string
		msg         string
	}{
		{"symlink to the node", link, "the node's own network namespace"},
		{"dot-dot path to the node", dotdot, "the node's own network namespace"},
		{"mount namespace", "/proc/self/ns/mnt", "not a network namespace"},
		{"a directory", "/run/netns", "not a network namespace"},
		{"a file in /proc", "/proc/self/status", "not a network namespace"},
	} {
		err := p.cmdAdd(&skel.CmdArgs{ContainerID: "c1", IfName: "eth0", Netns: tc.netns, StdinData: conf})
		wantCNIError(t, tc.name, err, types.ErrInvalidNetNS, tc.msg)
	}
	if links, _ := node.Links(); len(links) != 1 { // lo
		t.Errorf("node has links after refused ADDs: %+v", links)
	}
}
