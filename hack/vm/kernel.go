package main

import (
	"bufio"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

const installHint = "install qemu-system-x86 linux-image-amd64 busybox-static"

// bootModules are what the initramfs needs to mount the 9p root and open the
// virtio-serial ports, in load order; their dependencies are added from
// modules.dep and those built into the kernel are skipped.
var bootModules = []string{
	"virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci",
	"netfs", "fscache", "9pnet", "9pnet_virtio", "9p", "virtio_console", "overlay",
}

// kernel is a bootable kernel image and its modules directory.
type kernel struct {
	image   string
	version string
	modDir  string
}

// findKernel returns the kernel at image, or when image is empty the newest
// /boot/vmlinuz-* whose /lib/modules/<version> exists.
func findKernel(image string) (kernel, error) {
	if image != "" {
		return kernelAt(image)
	}
	images, err := filepath.Glob("/boot/vmlinuz-*")
	if err != nil {
		return kernel{}, fmt.Errorf("list /boot/vmlinuz-*: %w", err)
	}
	var found []kernel
	for _, img := range images {
		ver := strings.TrimPrefix(filepath.Base(img), "vmlinuz-")
		if _, err := os.Stat(filepath.Join("/lib/modules", ver, "modules.dep")); err == nil {
			found = append(found, kernel{image: img, version: ver, modDir: filepath.Join("/lib/modules", ver)})
		}
	}
	if len(found) == 0 {
		return kernel{}, fmt.Errorf("no /boot/vmlinuz-* with modules in /lib/modules/<version> (%s)", installHint)
	}
	sort.Slice(found, func(i, j int) bool { return versionLess(found[i].version, found[j].version) })
	return found[len(found)-1], nil
}

// kernelAt takes the version from the image's boot header, falling back to
// a vmlinuz-<version> file name.
func kernelAt(image string) (kernel, error) {
	ver, err := imageVersion(image)
	if err != nil {
		ver = strings.TrimPrefix(filepath.Base(image), "vmlinuz-")
		if ver == filepath.Base(image) {
			return kernel{}, fmt.Errorf("find version of kernel %s: %w", image, err)
		}
	}
	k := kernel{image: image, version: ver, modDir: filepath.Join("/lib/modules", ver)}
	if _, err := os.Stat(filepath.Join(k.modDir, "modules.dep")); err != nil {
		return kernel{}, fmt.Errorf("modules of kernel %s: %w", image, err)
	}
	return k, nil
}

// imageVersion reads the version string an x86 bzImage carries in its setup
// header (Documentation/arch/x86/boot.rst: "HdrS" at 0x202, kernel_version
// offset at 0x20e, relative to 0x200).
func imageVersion(image string) (string, error) {
	f, err := os.Open(image)
	if err != nil {
		return "", fmt.Errorf("open kernel image: %w", err)
	}
	defer f.Close()
	hdr := make([]byte, 0x210)
	if _, err := f.ReadAt(hdr, 0); err != nil {
		return "", fmt.Errorf("read boot header of %s: %w", image, err)
	}
	off := int64(hdr[0x20e]) | int64(hdr[0x20f])<<8
	if string(hdr[0x202:0x206]) != "HdrS" || off == 0 {
		return "", fmt.Errorf("%s is not a bzImage with a version string", image)
	}
	buf := make([]byte, 256)
	n, err := f.ReadAt(buf, off+0x200)
	if n == 0 {
		return "", fmt.Errorf("read version string of %s: %w", image, err)
	}
	ver, _, _ := strings.Cut(string(buf[:n]), " ")
	ver, _, _ = strings.Cut(ver, "\x00")
	return ver, nil
}

// versionLess compares kernel versions digit run by digit run.
func versionLess(a, b string) bool {
	for a != "" && b != "" {
		pa, ra := versionPart(a)
		pb, rb := versionPart(b)
		if pa != pb {
			if isDigits(pa) && isDigits(pb) {
				if len(pa) != len(pb) {
					return len(pa) < len(pb)
				}
			}
			return pa < pb
		}
		a, b = ra, rb
	}
	return len(a) < len(b)
}

func versionPart(s string) (part, rest string) {
	digit := s[0] >= '0' && s[0] <= '9'
	i := 1
	for i < len(s) && (s[i] >= '0' && s[i] <= '9') == digit {
		i++
	}
	return strings.TrimLeft(s[:i], "0"), s[i:]
}

func isDigits(s string) bool {
	return s == "" || (s[0] >= '0' && s[0] <= '9')
}

// module is a kernel module file to insmod.
type module struct {
	name string
	path string
}

// resolveModules lists the module files for names and their dependencies
// (from modules.dep), dependencies first; modules built into the kernel are
// left out.
func resolveModules(modDir string, names []string) ([]module, error) {
	deps, err := readModulesDep(filepath.Join(modDir, "modules.dep"))
	if err != nil {
		return nil, err
	}
	builtin, err := readModulesDep(filepath.Join(modDir, "modules.builtin"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	var out []module
	seen := map[string]bool{}
	var add func(name string) error
	add = func(name string) error {
		if seen[name] {
			return nil
		}
		seen[name] = true
		if _, ok := builtin[name]; ok {
			return nil
		}
		e, ok := deps[name]
		if !ok {
			return fmt.Errorf("kernel module %s: not in %s and not built in", name, modDir)
		}
		// modules.dep lists dependencies so that loading them last to
		// first works, as modprobe does.
		for i := len(e.deps) - 1; i >= 0; i-- {
			if err := add(moduleName(e.deps[i])); err != nil {
				return err
			}
		}
		out = append(out, module{name: name, path: filepath.Join(modDir, e.path)})
		return nil
	}
	for _, n := range names {
		if err := add(n); err != nil {
			return nil, err
		}
	}
	return out, nil
}

type depEntry struct {
	path string
	deps []string
}

// readModulesDep parses modules.dep ("path: dep dep") or modules.builtin
// ("path"), keyed by module name.
func readModulesDep(file string) (map[string]depEntry, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read module list: %w", err)
	}
	m := map[string]depEntry{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		path, rest, _ := strings.Cut(sc.Text(), ":")
		if path = strings.TrimSpace(path); path != "" {
			m[moduleName(path)] = depEntry{path: path, deps: strings.Fields(rest)}
		}
	}
	return m, nil
}

// moduleName turns kernel/fs/9p/9p.ko(.xz) into 9p; modprobe treats - and _
// alike, so does this.
func moduleName(path string) string {
	base := filepath.Base(path)
	base, _, _ = strings.Cut(base, ".ko")
	return strings.ReplaceAll(base, "-", "_")
}

// findBusybox returns a statically linked busybox: after switch_root nothing
// of the initramfs's libraries would be left, and there are none anyway.
func findBusybox() (string, error) {
	path, err := exec.LookPath("busybox")
	if err != nil {
		path = "/usr/bin/busybox"
	}
	f, err := elf.Open(path)
	if err != nil {
		return "", fmt.Errorf("open busybox (%s): %w", installHint, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return "", fmt.Errorf("%s is dynamically linked; the VM needs a static one (%s)", path, installHint)
		}
	}
	return path, nil
}

func findQEMU() (string, error) {
	path, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		return "", fmt.Errorf("find qemu (%s): %w", installHint, err)
	}
	return path, nil
}
