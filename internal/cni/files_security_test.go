package cni_test

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kdive/kdive/internal/cni"
	"github.com/kdive/kdive/internal/model"
)

// State files are written atomically (internal/fileutil: a dot file in
// the same directory, then rename) with safe permissions: nothing in the
// state directories is writable by group or others, secrets-free state is
// at most world-readable, the hostPort state is root's alone, no temporary
// file is left, and a symlink planted in the state directory is replaced,
// never followed.
func TestStateFilesSafe(t *testing.T) {
	h := newHarness(t, model.InterfaceRouted)
	// A symlink where the first allocation will be written, pointing at
	// a file outside the state directory: a store entry that is not a
	// regular file holds no address, and the write replaces the link.
	victim := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(victim, []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(h.dataDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, filepath.Join(h.dataDir, "10.0.1.2")); err != nil {
		t.Fatal(err)
	}
	p := withPorts(h.newPod("files"), map[string]any{"hostPort": 8080, "containerPort": 80})
	res := h.mustAdd(p)
	if got := p.ip(t).String(); got != "10.0.1.2" {
		t.Fatalf("pod got %s; want 10.0.1.2, the address behind the planted symlink (res %+v)", got, res)
	}
	if b, err := os.ReadFile(victim); err != nil || string(b) != "keep" {
		t.Errorf("the write followed the planted symlink: victim now %q, %v", b, err)
	}

	seen := map[string]fs.FileMode{}
	err := filepath.WalkDir(h.dataDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(h.dataDir, path)
		info, err := os.Lstat(path)
		if err != nil {
			return err
		}
		seen[rel] = info.Mode()
		if strings.Contains(d.Name(), ".tmp-") {
			t.Errorf("temporary file left: %s", rel)
		}
		if info.Mode()&fs.ModeSymlink != 0 {
			t.Errorf("%s is a symlink", rel)
		}
		if info.Mode().Perm()&0o022 != 0 {
			t.Errorf("%s is writable by group or others: %v", rel, info.Mode())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for rel, mode := range map[string]fs.FileMode{
		".":                         fs.ModeDir | 0o755,
		"10.0.1.2":                  0o644, // "ID\nIFNAME", as host-local writes it
		"last_reserved_ip":          0o644,
		"lock":                      0o600,
		"hostports":                 fs.ModeDir | 0o700,
		"hostports/lock":            0o600,
		"hostports/files@eth0.json": 0o600,
	} {
		if got, ok := seen[rel]; !ok || got != mode {
			t.Errorf("%s: mode %v (present %v), want %v", rel, got, ok, mode)
		}
	}
	t.Logf("state files: %v", seen)

	// The CNI network config the agent writes: replaced atomically, 0644
	// (the container runtime reads it).
	dir := filepath.Join(t.TempDir(), "net.d")
	for _, mtu := range []int{1450, 1400} {
		data, err := cni.NewConfList(cni.ConfListOptions{Mode: model.InterfaceRouted, PodCIDR: block, MTU: mtu, DataDir: h.dataDir})
		if err != nil {
			t.Fatal(err)
		}
		if err := cni.WriteConfList(dir, data); err != nil {
			t.Fatal(err)
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 || entries[0].Name() != cni.ConfListFile {
		t.Errorf("conf dir holds %v; want only %s", entries, cni.ConfListFile)
	}
	if info, err := os.Lstat(filepath.Join(dir, cni.ConfListFile)); err != nil || info.Mode() != 0o644 {
		t.Errorf("%s: %v, %v; want a regular file, mode 0644", cni.ConfListFile, info.Mode(), err)
	}
}
