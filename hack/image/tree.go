package main

import (
	"archive/tar"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
	"time"
)

// A tree is the image's file system, built in memory before it is written
// as one layer. Paths are absolute and clean; "/" is implicit.
type tree struct {
	entries map[string]*entry
}

type entry struct {
	typ  byte   // tar.TypeDir, tar.TypeReg or tar.TypeSymlink
	mode int64  // permission bits (and sticky bit)
	src  string // host file a regular file's bytes come from
	link string // a symlink's target
}

func newTree() *tree { return &tree{entries: map[string]*entry{}} }

// maxHops bounds symlink resolution, as the kernel's ELOOP does.
const maxHops = 40

// resolve follows the image's symlinks in every component of p and returns
// the path they lead to. Components that do not exist yet are kept as they
// are, so the result is where p would be created.
func (t *tree) resolve(p string) (string, error) {
	dir, rest := "/", split(p)
	for hops := 0; len(rest) > 0; {
		cur := path.Join(dir, rest[0])
		rest = rest[1:]
		e := t.entries[cur]
		switch {
		case e == nil || e.typ == tar.TypeDir:
			dir = cur
		case e.typ == tar.TypeSymlink:
			if hops++; hops > maxHops {
				return "", fmt.Errorf("resolve %s in the image: too many symlinks", p)
			}
			if path.IsAbs(e.link) {
				dir = "/"
			}
			rest = append(split(e.link), rest...)
		default:
			if len(rest) > 0 {
				return "", fmt.Errorf("resolve %s in the image: %s is not a directory", p, cur)
			}
			dir = cur
		}
	}
	return dir, nil
}

// mkdirAll creates the directory p, following the image's symlinks, and
// returns where it is.
func (t *tree) mkdirAll(p string) (string, error) {
	real, err := t.resolve(p)
	if err != nil {
		return "", err
	}
	for d := real; d != "/"; d = path.Dir(d) {
		if t.entries[d] == nil {
			t.entries[d] = &entry{typ: tar.TypeDir, mode: 0o755}
		}
	}
	return real, nil
}

// add puts e at p. p's directories are created or followed as a file system
// would; p itself is never followed. Adding the same thing twice is fine,
// anything else already at p is an error.
func (t *tree) add(p string, e *entry) error {
	dir, err := t.mkdirAll(path.Dir(p))
	if err != nil {
		return err
	}
	return t.put(path.Join(dir, path.Base(p)), e)
}

// put places e at exactly p, whose directories must be directories already
// (or missing, then they are created).
func (t *tree) put(p string, e *entry) error {
	for d := path.Dir(p); d != "/"; d = path.Dir(d) {
		if old := t.entries[d]; old != nil && old.typ != tar.TypeDir {
			return fmt.Errorf("add %s to the image: %s is already there and is not a directory", p, d)
		}
	}
	if old := t.entries[p]; old != nil {
		if *old == *e || (old.typ == tar.TypeDir && e.typ == tar.TypeDir) {
			return nil
		}
		return fmt.Errorf("add %s to the image: something else is already there", p)
	}
	for d := path.Dir(p); d != "/" && t.entries[d] == nil; d = path.Dir(d) {
		t.entries[d] = &entry{typ: tar.TypeDir, mode: 0o755}
	}
	t.entries[p] = e
	return nil
}

func (t *tree) has(p string) bool {
	real, err := t.resolve(p)
	return err == nil && t.entries[real] != nil
}

// epoch is every entry's modification time, so that the same inputs give
// the same bytes.
var epoch = time.Unix(0, 0).UTC()

// writeTar writes the tree as a tar stream, sorted by path, owned by root,
// with fixed times.
func (t *tree) writeTar(w io.Writer) error {
	paths := make([]string, 0, len(t.entries))
	for p := range t.entries {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	tw := tar.NewWriter(w)
	for _, p := range paths {
		e := t.entries[p]
		hdr := &tar.Header{
			Typeflag: e.typ,
			Name:     strings.TrimPrefix(p, "/"),
			Mode:     e.mode,
			ModTime:  epoch,
			Uname:    "root",
			Gname:    "root",
		}
		switch e.typ {
		case tar.TypeDir:
			hdr.Name += "/"
		case tar.TypeSymlink:
			hdr.Linkname = e.link
		case tar.TypeReg:
			fi, err := os.Stat(e.src)
			if err != nil {
				return err
			}
			hdr.Size = fi.Size()
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("write %s: %w", p, err)
		}
		if e.typ == tar.TypeReg {
			if err := copyFile(tw, e.src, hdr.Size); err != nil {
				return fmt.Errorf("write %s from %s: %w", p, e.src, err)
			}
		}
	}
	return tw.Close()
}

func copyFile(w io.Writer, src string, size int64) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	n, err := io.Copy(w, f)
	if err == nil && n != size {
		err = fmt.Errorf("size changed while copying (%d, then %d bytes)", size, n)
	}
	return err
}

// split returns p's components, without empty ones and ".".
func split(p string) []string {
	var out []string
	for _, c := range strings.Split(p, "/") {
		if c != "" && c != "." {
			out = append(out, c)
		}
	}
	return out
}
