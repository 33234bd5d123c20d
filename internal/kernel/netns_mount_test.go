package kernel

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// mountsAt lists the propagation tags of the mounts whose mount point is
// dir ("shared:N", "master:N", or "" for a private one).
func mountsAt(t *testing.T, dir string) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - ...
		f := strings.Fields(line)
		if len(f) < 7 || f[4] != dir {
			continue
		}
		tag := ""
		for _, o := range f[6:] {
			if o == "-" {
				break
			}
			tag = strings.TrimSpace(tag + " " + o)
		}
		out = append(out, tag)
	}
	return out
}

// TestSharedMountPoint: the directory namespaces are mounted in becomes a
// shared mount point of its own, once, as `ip netns add` makes
// /run/netns, so that a later `ip netns add` does not bind the directory
// over itself and hide the namespaces mounted there (they can then be
// neither unmounted nor removed: a lab's down failed with "device or
// resource busy"). A directory that already holds mounted namespaces is
// left alone, for the same reason.
func TestSharedMountPoint(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: it mounts")
	}
	dir := t.TempDir()
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) }) // not a mount point if the test failed early
	if got := mountsAt(t, dir); len(got) != 0 {
		t.Fatalf("a new directory is a mount point: %q", got)
	}
	for range 2 {
		if err := sharedMountPoint(dir); err != nil {
			t.Fatal(err)
		}
	}
	if got := mountsAt(t, dir); len(got) != 1 || !strings.HasPrefix(got[0], "shared:") {
		t.Errorf("mounts at %s after two calls: %q; want one, shared", dir, got)
	}

	busy := t.TempDir()
	ns := filepath.Join(busy, "ns")
	if err := os.WriteFile(ns, nil, 0o444); err != nil {
		t.Fatal(err)
	}
	if err := bindNewNetNS(ns); err != nil {
		t.Fatal(err)
	}
	if err := sharedMountPoint(busy); err != nil {
		t.Fatal(err)
	}
	if got := mountsAt(t, busy); len(got) != 0 {
		_ = unix.Unmount(busy, unix.MNT_DETACH)
		t.Errorf("a directory holding a mounted namespace became a mount point %q: the namespace is hidden under it", got)
	}
	if err := unix.Unmount(ns, unix.MNT_DETACH); err != nil {
		t.Fatalf("unmount the namespace: %v", err)
	}
	if err := os.Remove(ns); err != nil {
		t.Errorf("remove the namespace's file: %v", err)
	}
}
