// Command mkimage writes a container image as a docker-archive tarball
// (what `docker save` writes and `ctr images import` reads) from files of
// this machine, without Docker and without a registry. The image has one
// layer; the same inputs give the same bytes.
//
// The lab builds its images with it (make image, make images): kdive's own,
// and the pause, agnhost, busybox and CoreDNS images a Kubernetes cluster
// asks for, which the lab imports into each node's containerd instead of
// pulling them.
//
// Host paths (-host) are laid out first, at the same paths and with the
// symlinks met on the way, so that explicit image paths (-file, -symlink,
// -dir, -busybox) then resolve through the same directory links (a
// merged-/usr /bin, say) as they would on the host. The order of flags
// does not matter.
package main

import (
	"archive/tar"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
)

// pairs is a repeatable flag of "A:B" values.
type pairs [][2]string

func (p *pairs) String() string { return fmt.Sprint(*p) }
func (p *pairs) Set(s string) error {
	a, b, ok := strings.Cut(s, ":")
	if !ok || a == "" || b == "" {
		return fmt.Errorf("%q is not A:B", s)
	}
	*p = append(*p, [2]string{a, b})
	return nil
}

// list is a repeatable flag.
type list []string

func (l *list) String() string     { return strings.Join(*l, " ") }
func (l *list) Set(s string) error { *l = append(*l, s); return nil }

type options struct {
	out, tag, workdir                 string
	hosts, dirs, entrypoint, cmd, env list
	files, symlinks, busybox          pairs
}

func main() {
	var o options
	flag.StringVar(&o.out, "o", "", "write the image `tarball` here")
	flag.StringVar(&o.tag, "tag", "", "the image's `name`, as `ctr images import` will list it")
	flag.Var(&o.hosts, "host", "copy this host `path` (a file, or a directory and all in it) to the same path, with the symlinks on the way and the shared libraries of ELF files")
	flag.Var(&o.files, "file", "copy the host file `SRC:DST` (its contents, following symlinks) to the image path DST, with the shared libraries of an ELF file")
	flag.Var(&o.symlinks, "symlink", "make the symlink `TARGET:LINK`, as ln -s TARGET LINK")
	flag.Var(&o.dirs, "dir", "make the directory `PATH[:MODE]` (octal mode, 0755 if not given)")
	flag.Var(&o.busybox, "busybox", "copy the host busybox `SRC:DIR` to DIR/busybox and link each applet it lists to it in DIR, where nothing else is")
	flag.Var(&o.entrypoint, "entrypoint", "append `arg` to the image's entrypoint")
	flag.Var(&o.cmd, "cmd", "append `arg` to the image's default command")
	flag.Var(&o.env, "env", "set `NAME=VALUE` in the image's environment")
	flag.StringVar(&o.workdir, "workdir", "", "the image's working `directory`")
	flag.Parse()
	if o.out == "" || o.tag == "" || flag.NArg() > 0 {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

func run(o options) error {
	t, err := layout(o)
	if err != nil {
		return err
	}
	return write(o, t)
}

// layout builds the image's file system: host paths first, then explicit
// image paths (symlinks before the files they may name the directory of),
// then busybox applets wherever nothing else is.
func layout(o options) (*tree, error) {
	t := newTree()
	h := newHost(t)
	for _, p := range o.hosts {
		if err := h.add(p); err != nil {
			return nil, err
		}
	}
	for _, s := range o.symlinks {
		if err := t.add(s[1], &entry{typ: tar.TypeSymlink, mode: 0o777, link: s[0]}); err != nil {
			return nil, err
		}
	}
	for _, d := range o.dirs {
		p, mode := d, int64(0o755)
		if a, b, ok := strings.Cut(d, ":"); ok {
			m, err := strconv.ParseInt(b, 8, 32)
			if err != nil {
				return nil, fmt.Errorf("-dir %s: mode: %w", d, err)
			}
			p, mode = a, m
		}
		real, err := t.mkdirAll(p)
		if err != nil {
			return nil, err
		}
		if real != "/" {
			t.entries[real].mode = mode
		}
	}
	for _, f := range o.files {
		if err := addFile(t, f[0], f[1]); err != nil {
			return nil, err
		}
		// An ELF file from elsewhere (a Debian package unpacked, not
		// installed) needs this machine's libraries all the same.
		if err := h.libraries(f[0]); err != nil {
			return nil, err
		}
	}
	for _, b := range o.busybox {
		if err := addBusybox(t, b[0], b[1]); err != nil {
			return nil, err
		}
	}
	return t, nil
}

func addFile(t *tree, src, dst string) error {
	real, err := filepath.EvalSymlinks(src)
	if err != nil {
		return fmt.Errorf("-file %s: %w", src, err)
	}
	fi, err := os.Stat(real)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("-file %s: not a regular file", src)
	}
	return t.add(dst, &entry{typ: tar.TypeReg, mode: int64(fi.Mode().Perm()), src: real})
}

func addBusybox(t *tree, src, dir string) error {
	if err := addFile(t, src, path.Join(dir, "busybox")); err != nil {
		return err
	}
	out, err := exec.Command(src, "--list").Output()
	if err != nil {
		return fmt.Errorf("%s --list: %w", src, err)
	}
	for _, applet := range strings.Fields(string(out)) {
		p := path.Join(dir, applet)
		if applet == "busybox" || t.has(p) {
			continue
		}
		if err := t.add(p, &entry{typ: tar.TypeSymlink, mode: 0o777, link: "busybox"}); err != nil {
			return err
		}
	}
	return nil
}
