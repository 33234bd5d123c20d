package main

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	_ "embed"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// initScript is /init of the initramfs; stage2Script runs as PID 1 after
// switch_root. Both are documented in their own text.
var (
	//go:embed vm_init.sh
	initScript []byte
	//go:embed vm_stage2.sh
	stage2Script []byte
)

const (
	defaultCacheDir = "/var/cache/kdive-vm"
	// initramfsLayout goes into the cache key; change it when the archive's
	// layout changes in a way the hashed inputs do not show.
	initramfsLayout = "kdive-vm initramfs 1"
)

// cachedInitramfs returns the path of the gzip-compressed base initramfs for
// k, building it into the cache dir when missing. It is keyed by the kernel
// version and a hash of every input, so it never goes stale.
func cachedInitramfs(dir string, k kernel, busybox string) (string, error) {
	files, err := initramfsFiles(k, busybox)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s\x00", initramfsLayout, k.version)
	for _, f := range files {
		fmt.Fprintf(h, "%s\x00%o\x00%d\x00", f.name, f.perm, len(f.data))
		h.Write(f.data)
	}
	path := filepath.Join(dir, fmt.Sprintf("initramfs-%s-%x.cpio.gz", k.version, h.Sum(nil)[:8]))
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	if err := writeInitramfs(path, files); err != nil {
		return "", err
	}
	pruneStale(dir, "initramfs-"+k.version+"-*.cpio.gz", path)
	return path, nil
}

// ensureCacheDir creates dir, or when empty defaultCacheDir, falling back to
// the user's cache directory when that is not writable.
func ensureCacheDir(dir string) (string, error) {
	if dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return "", fmt.Errorf("create initramfs cache: %w", err)
		}
		return dir, nil
	}
	if err := os.MkdirAll(defaultCacheDir, 0o755); err == nil {
		return defaultCacheDir, nil
	}
	user, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("find a cache directory for the initramfs: %w", err)
	}
	dir = filepath.Join(user, "kdive-vm")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("create initramfs cache: %w", err)
	}
	return dir, nil
}

type archiveFile struct {
	name string
	perm uint32
	data []byte
}

// initramfsFiles reads everything the base archive holds besides its
// directories: busybox, the init scripts, and the boot modules with the
// order to load them in.
func initramfsFiles(k kernel, busybox string) ([]archiveFile, error) {
	bb, err := os.ReadFile(busybox)
	if err != nil {
		return nil, fmt.Errorf("read busybox: %w", err)
	}
	mods, err := resolveModules(k.modDir, bootModules)
	if err != nil {
		return nil, err
	}
	files := []archiveFile{
		{name: "bin/busybox", perm: 0o755, data: bb},
		{name: "init", perm: 0o755, data: initScript},
		{name: "kdive/stage2.sh", perm: 0o644, data: stage2Script},
	}
	var order strings.Builder
	for _, m := range mods {
		data, err := readModule(m.path)
		if err != nil {
			return nil, err
		}
		files = append(files, archiveFile{name: "lib/modules/" + m.name + ".ko", perm: 0o644, data: data})
		fmt.Fprintf(&order, "%s\n", m.name)
	}
	files = append(files, archiveFile{name: "kdive/modules", perm: 0o644, data: []byte(order.String())})
	return files, nil
}

// readModule returns a module's ELF bytes; busybox insmod does not
// decompress, so .ko.gz is inflated here and xz/zstd are refused.
func readModule(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read kernel module: %w", err)
	}
	switch {
	case strings.HasSuffix(path, ".ko"):
		return data, nil
	case strings.HasSuffix(path, ".ko.gz"):
		zr, err := gzip.NewReader(bytes.NewReader(data))
		if err != nil {
			return nil, fmt.Errorf("decompress kernel module %s: %w", path, err)
		}
		out, err := io.ReadAll(zr)
		if err != nil {
			return nil, fmt.Errorf("decompress kernel module %s: %w", path, err)
		}
		return out, nil
	default:
		return nil, fmt.Errorf("kernel module %s: only .ko and .ko.gz are supported", path)
	}
}

// writeInitramfs builds the base archive and writes it to path.
func writeInitramfs(path string, files []archiveFile) error {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	c := &cpioWriter{w: zw}
	for _, d := range []string{"bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules", "kdive"} {
		c.dir(d)
	}
	c.symlink("bin/sh", "busybox")
	c.charDev("dev/console", 0o600, 5, 1)
	for _, f := range files {
		c.file(f.name, f.perm, f.data)
	}
	if err := c.close(); err != nil {
		return fmt.Errorf("build initramfs: %w", err)
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("compress initramfs: %w", err)
	}
	return writeFileAtomic(path, buf.Bytes())
}

// runInitrd returns base followed by a small uncompressed archive holding
// kdive/spec.sh (the kernel unpacks concatenated archives in order), in an
// already unlinked temporary file that qemu opens as /proc/self/fd/N:
// the spec holds the caller's environment, and nothing is left behind even
// when the runner is killed.
func runInitrd(base string, spec []byte) (*os.File, error) {
	data, err := os.ReadFile(base)
	if err != nil {
		return nil, fmt.Errorf("read cached initramfs: %w", err)
	}
	// An uncompressed archive must start 4-byte aligned; zeros between
	// archives are skipped.
	if r := len(data) % 512; r != 0 {
		data = append(data, make([]byte, 512-r)...)
	}
	buf := bytes.NewBuffer(data)
	c := &cpioWriter{w: buf}
	c.file("kdive/spec.sh", 0o600, spec)
	if err := c.close(); err != nil {
		return nil, fmt.Errorf("build run spec archive: %w", err)
	}
	f, err := os.CreateTemp("", "kdive-vm-initrd-")
	if err != nil {
		return nil, fmt.Errorf("write VM initrd: %w", err)
	}
	_ = os.Remove(f.Name())
	if _, err := f.Write(buf.Bytes()); err != nil {
		f.Close()
		return nil, fmt.Errorf("write VM initrd: %w", err)
	}
	return f, nil
}
