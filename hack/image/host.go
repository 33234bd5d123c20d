package main

import (
	"archive/tar"
	"debug/elf"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// libDirs are where a library named by DT_NEEDED is looked for, as the
// dynamic loader of a Debian amd64 host looks (after any DT_RUNPATH).
var libDirs = []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"}

// A host copies paths of this machine into a tree at the same paths,
// keeping the symlinks on the way (merged-/usr directory links, library
// soname links, Debian's alternatives), and brings along the shared
// libraries and loader of every ELF file it copies.
type host struct {
	t    *tree
	done map[string]bool // host files whose libraries were added
}

func newHost(t *tree) *host { return &host{t: t, done: map[string]bool{}} }

// add copies the host path p: a file with its symlink chain, or a
// directory with everything under it.
func (h *host) add(p string) error {
	real, err := h.mirror(p)
	if err != nil {
		return err
	}
	fi, err := os.Stat(real)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return h.libraries(real)
	}
	return filepath.WalkDir(real, func(q string, d fs.DirEntry, err error) error {
		if err != nil || q == real {
			return err
		}
		if d.IsDir() {
			_, err := h.mirror(q)
			return err
		}
		return h.add(q)
	})
}

// mirror walks the host path p component by component, recreating in the
// tree each symlink it passes and the directories and file it reaches, and
// returns the path of the file or directory p names (symlink-free).
func (h *host) mirror(p string) (string, error) {
	if !path.IsAbs(p) {
		return "", fmt.Errorf("copy host path %s: not absolute", p)
	}
	dir, rest := "/", split(p)
	for hops := 0; len(rest) > 0; {
		cur := path.Join(dir, rest[0])
		rest = rest[1:]
		fi, err := os.Lstat(cur)
		if err != nil {
			return "", fmt.Errorf("copy host path %s: %w", p, err)
		}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			if hops++; hops > maxHops {
				return "", fmt.Errorf("copy host path %s: too many symlinks", p)
			}
			target, err := os.Readlink(cur)
			if err != nil {
				return "", err
			}
			if err := h.t.put(cur, &entry{typ: tar.TypeSymlink, mode: 0o777, link: target}); err != nil {
				return "", err
			}
			if path.IsAbs(target) {
				dir = "/"
			}
			rest = append(split(target), rest...)
		case fi.IsDir():
			if err := h.t.put(cur, &entry{typ: tar.TypeDir, mode: int64(fi.Mode().Perm())}); err != nil {
				return "", err
			}
			dir = cur
		case fi.Mode().IsRegular() && len(rest) == 0:
			if err := h.t.put(cur, &entry{typ: tar.TypeReg, mode: int64(fi.Mode().Perm()), src: cur}); err != nil {
				return "", err
			}
			dir = cur
		default:
			return "", fmt.Errorf("copy host path %s: %s is neither a directory, a regular file nor a symlink", p, cur)
		}
	}
	return dir, nil
}

// libraries adds the loader and the shared libraries the ELF file f needs,
// and theirs in turn. A file that is not ELF needs nothing.
func (h *host) libraries(f string) error {
	if h.done[f] {
		return nil
	}
	h.done[f] = true
	if ok, err := isELF(f); !ok || err != nil {
		return err
	}
	ef, err := elf.Open(f)
	if err != nil {
		return err
	}
	defer ef.Close()
	var needs []string
	for _, prog := range ef.Progs {
		if prog.Type != elf.PT_INTERP {
			continue
		}
		b := make([]byte, prog.Filesz)
		if _, err := prog.ReadAt(b, 0); err != nil {
			return fmt.Errorf("read the interpreter of %s: %w", f, err)
		}
		interp := strings.TrimRight(string(b), "\x00")
		real, err := h.mirror(interp)
		if err != nil {
			return fmt.Errorf("interpreter of %s: %w", f, err)
		}
		needs = append(needs, real)
	}
	sonames, err := ef.ImportedLibraries()
	if err != nil {
		return fmt.Errorf("read the libraries %s needs: %w", f, err)
	}
	dirs := runpath(ef, path.Dir(f))
	for _, so := range sonames {
		lib, err := find(so, append(dirs, libDirs...), ef.Machine)
		if err != nil {
			return fmt.Errorf("library %s of %s: %w", so, f, err)
		}
		real, err := h.mirror(lib)
		if err != nil {
			return err
		}
		needs = append(needs, real)
	}
	for _, n := range needs {
		if err := h.libraries(n); err != nil {
			return err
		}
	}
	return nil
}

func isELF(f string) (bool, error) {
	fd, err := os.Open(f)
	if err != nil {
		return false, err
	}
	defer fd.Close()
	magic := make([]byte, len(elf.ELFMAG))
	if _, err := io.ReadFull(fd, magic); err != nil {
		return false, nil
	}
	return string(magic) == elf.ELFMAG, nil
}

// runpath returns the directories of ef's DT_RUNPATH, or of its DT_RPATH
// when it has no DT_RUNPATH, with $ORIGIN expanded.
func runpath(ef *elf.File, origin string) []string {
	rp, _ := ef.DynString(elf.DT_RUNPATH)
	if len(rp) == 0 {
		rp, _ = ef.DynString(elf.DT_RPATH)
	}
	var dirs []string
	for _, s := range rp {
		for _, d := range strings.Split(s, ":") {
			d = strings.NewReplacer("${ORIGIN}", origin, "$ORIGIN", origin).Replace(d)
			if path.IsAbs(d) {
				dirs = append(dirs, d)
			}
		}
	}
	return dirs
}

// find returns the first file named so in dirs that is an ELF object for
// machine m (a 32-bit library of the same name is skipped, as the loader
// skips it).
func find(so string, dirs []string, m elf.Machine) (string, error) {
	for _, d := range dirs {
		p := path.Join(d, so)
		ef, err := elf.Open(p)
		if err != nil {
			continue
		}
		ok := ef.Machine == m
		ef.Close()
		if ok {
			return p, nil
		}
	}
	return "", fmt.Errorf("not found in %s", strings.Join(dirs, ", "))
}
