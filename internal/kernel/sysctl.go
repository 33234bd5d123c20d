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
	path := sysctlPath(name)
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
		b, err = os.ReadFile(sysctlPath(name))
		return err
	})
	if err != nil {
		return "", fmt.Errorf("read sysctl %s in %s: %w", name, n, err)
	}
	return strings.TrimSpace(string(b)), nil
}

// sysctlPath maps a dotted name to its file. As with sysctl(8), a name
// may be given with slashes instead, for device names that contain a dot:
// "net/ipv4/conf/vxlan.kdive/rp_filter".
func sysctlPath(name string) string {
	if strings.Contains(name, "/") {
		return filepath.Join("/proc/sys", name)
	}
	return filepath.Join("/proc/sys", strings.ReplaceAll(name, ".", "/"))
}
