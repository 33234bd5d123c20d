package kernel

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Sysctl writes a sysctl (dotted name, e.g. "net.ipv4.ip_forward") inside
// the namespace. /proc/sys/net follows the network namespace of the thread
// that opens it, hence Do.
func (n *NetNS) Sysctl(name, value string) error {
	path := n.sysctlPath(name)
	err := n.Do(func() error { return os.WriteFile(path, []byte(value), 0o644) })
	if err != nil {
		return fmt.Errorf("sysctl %s=%s in %s: %w", name, value, n, err)
	}
	return nil
}

// ReadSysctl reads a sysctl inside the namespace.
func (n *NetNS) ReadSysctl(name string) (string, error) {
	var b []byte
	err := n.Do(func() (err error) {
		b, err = os.ReadFile(n.sysctlPath(name))
		return err
	})
	if err != nil {
		return "", fmt.Errorf("read sysctl %s in %s: %w", name, n, err)
	}
	return strings.TrimSpace(string(b)), nil
}

// SetSysctlDir makes Sysctl and ReadSysctl use dir in place of /proc/sys
// ("" restores it). A container that is not privileged sees /proc/sys
// read-only; the node's /proc/sys/net bind-mounted elsewhere (at
// dir/net) is writable, and its files still follow the network namespace
// of the thread that opens them.
func (n *NetNS) SetSysctlDir(dir string) { n.sysctlDir = dir }

// sysctlPath maps a dotted name to its file. As with sysctl(8), a name
// may be given with slashes instead, for device names that contain a dot:
// "net/ipv4/conf/vxlan.kdive/rp_filter".
func (n *NetNS) sysctlPath(name string) string {
	dir := n.sysctlDir
	if dir == "" {
		dir = "/proc/sys"
	}
	if strings.Contains(name, "/") {
		return filepath.Join(dir, name)
	}
	return filepath.Join(dir, strings.ReplaceAll(name, ".", "/"))
}
