package kernel_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/ktest"
)

// An agent in a container without CAP_SYS_ADMIN cannot setns, not even
// into the namespace it is in: its own namespace's sockets are opened in
// place (NetlinkNS 0), another's through its descriptor.
func TestNetlinkNSOwnNamespace(t *testing.T) {
	own, err := kernel.OpenNetNS("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	defer own.Close()
	if got := own.NetlinkNS(); got != 0 {
		t.Errorf("own namespace: NetlinkNS = %d, want 0 (no setns)", got)
	}
	other := ktest.NewNetNS(t)
	if got := other.NetlinkNS(); got != other.FD() || got == 0 {
		t.Errorf("another namespace: NetlinkNS = %d, want its descriptor %d", got, other.FD())
	}
	// Do in the own namespace runs in place: it works, and so does a
	// netlink read through the handle.
	if err := own.Do(func() error { return nil }); err != nil {
		t.Error(err)
	}
	if _, err := other.Links(); err != nil {
		t.Error(err)
	}
}

// SetSysctlDir moves the sysctl files' root, as the DaemonSet's agent sees
// the node's /proc/sys/net at /host/proc/sys/net.
func TestSysctlDir(t *testing.T) {
	own, err := kernel.OpenNetNS("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	defer own.Close()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "net", "ipv4", "conf", "vxlan.kdive"), 0o755); err != nil {
		t.Fatal(err)
	}
	own.SetSysctlDir(dir)
	if err := own.Sysctl("net.ipv4.ip_forward", "1"); err != nil {
		t.Fatal(err)
	}
	if err := own.Sysctl("net/ipv4/conf/vxlan.kdive/rp_filter", "2"); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{"net/ipv4/ip_forward": "1", "net/ipv4/conf/vxlan.kdive/rp_filter": "2"} {
		if b, err := os.ReadFile(filepath.Join(dir, path)); err != nil || string(b) != want {
			t.Errorf("%s = %q, %v; want %q", path, b, err, want)
		}
	}
	if got, err := own.ReadSysctl("net.ipv4.ip_forward"); err != nil || got != "1" {
		t.Errorf("ReadSysctl = %q, %v", got, err)
	}
}
