package kernel

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NetNSDir is where named network namespaces are bind-mounted, shared with
// iproute2's `ip netns`.
const NetNSDir = "/run/netns"

// maxNSName keeps names usable as file names and readable in `ip netns`.
const maxNSName = 200

// NetNS is an open network namespace. Close it when done; closing does not
// delete the namespace (DeleteNetNS does).
type NetNS struct {
	name string
	path string
	fd   netns.NsHandle
	nl   *netlink.Handle
	// sysctlDir stands for /proc/sys in sysctl paths (SetSysctlDir).
	sysctlDir string
	// own: the namespace is the one the opening thread was in (the
	// process's, for an agent in its node's namespace), which sockets
	// are opened in without setns (see handleAt).
	own bool
}

// Name is the namespace's name under NetNSDir (empty when opened by path).
func (n *NetNS) Name() string { return n.name }

// FD is the namespace's file descriptor; valid until Close.
func (n *NetNS) FD() int { return int(n.fd) }

// NetlinkNS is the namespace for netlink.Config.NetNS (and the libraries
// built on it): its file descriptor, or 0 (the calling thread's own) when
// it is the namespace the process was in when it opened it, so the socket
// is opened without setns(2), which needs CAP_SYS_ADMIN even to enter the
// namespace the caller is in.
func (n *NetNS) NetlinkNS() int {
	if n.own {
		return 0
	}
	return int(n.fd)
}

// netlinkAt is NetlinkNS for vishvananda/netlink's nl package: None means
// the calling thread's namespace.
func (n *NetNS) netlinkAt() netns.NsHandle {
	if n.own {
		return netns.None()
	}
	return n.fd
}

// Path is the namespace's file, usable with setns(2) and nsenter --net=.
func (n *NetNS) Path() string { return n.path }

// Close releases the handle on the namespace.
func (n *NetNS) Close() error {
	if n == nil {
		return nil
	}
	if n.nl != nil {
		n.nl.Close()
	}
	return n.fd.Close()
}

func validNSName(name string) error {
	if name == "" || len(name) > maxNSName || strings.ContainsAny(name, "/\x00") || name == "." || name == ".." {
		return fmt.Errorf("invalid network namespace name %q", name)
	}
	return nil
}

// CreateNetNS creates a new named network namespace with its loopback up and
// returns it open. It fails with an error wrapping fs.ErrExist when the name
// is taken. The calling thread is never left inside the new namespace.
func CreateNetNS(name string) (*NetNS, error) {
	if err := validNSName(name); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(NetNSDir, 0o755); err != nil {
		return nil, fmt.Errorf("create netns %s: %w", name, err)
	}
	if err := sharedMountPoint(NetNSDir); err != nil {
		return nil, fmt.Errorf("create netns %s: %w", name, err)
	}
	path := filepath.Join(NetNSDir, name)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o444)
	if err != nil {
		return nil, fmt.Errorf("create netns %s: %w", name, err)
	}
	f.Close()
	if err := bindNewNetNS(path); err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("create netns %s: %w", name, err)
	}
	n, err := OpenNetNS(name)
	if err != nil {
		_ = DeleteNetNS(name)
		return nil, err
	}
	if err := n.LinkUp("lo"); err != nil {
		n.Close()
		_ = DeleteNetNS(name)
		return nil, fmt.Errorf("create netns %s: %w", name, err)
	}
	return n, nil
}

// sharedMountPoint makes dir a mount point of its own, shared, as `ip
// netns add` does to /run/netns before its first namespace. Without it the
// first `ip netns add` run later (by anyone) bind-mounts the directory
// over itself, and every namespace mounted there before is hidden under
// that mount: its path now names the file on the new mount, so it cannot
// be unmounted (not mounted) nor removed (busy), and a lab of that name
// cannot come up again until someone unmounts the directory. For the same
// reason it leaves a directory that is not a mount point alone while
// namespaces are mounted in it (kdive's of an earlier version, anyone's):
// the next namespace created when none is makes it one.
func sharedMountPoint(dir string) error {
	for made := false; ; made = true {
		err := unix.Mount("", dir, "none", unix.MS_SHARED|unix.MS_REC, "")
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EINVAL) || made {
			return fmt.Errorf("make %s a shared mount: %w", dir, err)
		}
		// EINVAL: not a mount point yet.
		if busy, err := mountsUnder(dir); err != nil || busy {
			return err
		}
		if err := unix.Mount(dir, dir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind mount %s on itself: %w", dir, err)
		}
	}
}

// mountsUnder says whether anything is mounted below dir.
func mountsUnder(dir string) (bool, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT ...
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			return true, nil
		}
	}
	return false, nil
}

// bindNewNetNS unshares a new network namespace on a locked thread, bind
// mounts it at path, and returns the thread to where it was.
func bindNewNetNS(path string) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("get current netns: %w", err)
	}
	defer orig.Close()
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("unshare: %w", err)
	}
	self := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
	mountErr := unix.Mount(self, path, "none", unix.MS_BIND, "")
	if err := netns.Set(orig); err != nil {
		// The thread is stuck in the new namespace: leave it locked so
		// the runtime retires it when this goroutine ends.
		return fmt.Errorf("return to original netns: %w", err)
	}
	runtime.UnlockOSThread()
	if mountErr != nil {
		return fmt.Errorf("bind mount %s: %w", path, mountErr)
	}
	return nil
}

// OpenNetNS opens a namespace by name (under NetNSDir) or by absolute path.
func OpenNetNS(nameOrPath string) (*NetNS, error) {
	name, path := nameOrPath, nameOrPath
	if strings.HasPrefix(nameOrPath, "/") {
		name = ""
	} else {
		if err := validNSName(nameOrPath); err != nil {
			return nil, err
		}
		path = filepath.Join(NetNSDir, nameOrPath)
	}
	fd, err := netns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", nameOrPath, err)
	}
	if err := checkIsNetNS(int(fd)); err != nil {
		fd.Close()
		return nil, fmt.Errorf("open netns %s: %w", nameOrPath, err)
	}
	own := isCurrent(fd)
	nl, err := handleAt(fd, own)
	if err != nil {
		fd.Close()
		return nil, fmt.Errorf("open netlink in netns %s: %w", nameOrPath, err)
	}
	return &NetNS{name: name, path: path, fd: fd, nl: nl, own: own}, nil
}

// isCurrent reports whether fd is the calling thread's network namespace.
func isCurrent(fd netns.NsHandle) bool {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cur, err := netns.Get()
	if err != nil {
		return false
	}
	defer cur.Close()
	return cur.Equal(fd)
}

// handleAt opens a netlink handle in the namespace fd. In the caller's own
// namespace it does not enter it: setns(2) needs CAP_SYS_ADMIN, which an
// unprivileged container (kdive install-cni's, the agent's) lacks, even
// to enter the namespace it is in.
func handleAt(fd netns.NsHandle, own bool) (*netlink.Handle, error) {
	if own {
		return netlink.NewHandle()
	}
	return netlink.NewHandleAt(fd)
}

// errNotNetNS is returned when a path is not a network namespace file.
var errNotNetNS = errors.New("not a network namespace")

func checkIsNetNS(fd int) error {
	var st unix.Statfs_t
	if err := unix.Fstatfs(fd, &st); err != nil {
		return err
	}
	if st.Type != unix.NSFS_MAGIC && st.Type != unix.PROC_SUPER_MAGIC {
		return errNotNetNS
	}
	// Any namespace file (or a /proc file) passes the first check; the
	// kernel says which kind it is.
	if typ, err := unix.IoctlRetInt(fd, unix.NS_GET_NSTYPE); err != nil || typ != unix.CLONE_NEWNET {
		return errNotNetNS
	}
	return nil
}

// DeleteNetNS unmounts and removes a named namespace. The namespace itself
// goes away with its last process and open handle. Deleting a namespace
// that does not exist is not an error.
func DeleteNetNS(name string) error {
	if err := validNSName(name); err != nil {
		return err
	}
	path := filepath.Join(NetNSDir, name)
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete netns %s: unmount: %w", name, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete netns %s: %w", name, err)
	}
	return nil
}

// ListNetNS returns the names of the named namespaces starting with prefix,
// sorted.
func ListNetNS(prefix string) ([]string, error) {
	entries, err := os.ReadDir(NetNSDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list netns: %w", err)
	}
	var names []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	return names, nil
}

// Do runs fn on a locked OS thread inside the namespace and returns the
// thread to its original namespace afterwards. Processes started by fn
// (os/exec) inherit the namespace.
func (n *NetNS) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get current netns: %w", err)
			return
		}
		defer orig.Close()
		// Already there: no setns, which needs CAP_SYS_ADMIN even to enter
		// the namespace the caller is in (an agent in a hostNetwork
		// container without it works in its own).
		if orig.Equal(n.fd) {
			fnErr := fn()
			runtime.UnlockOSThread()
			errc <- fnErr
			return
		}
		if err := netns.Set(n.fd); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns %s: %w", n, err)
			return
		}
		fnErr := fn()
		if err := netns.Set(orig); err != nil {
			// Leave the thread locked: the runtime discards it when this
			// goroutine exits, so no other goroutine runs in the wrong netns.
			errc <- fmt.Errorf("leave netns %s: %w", n, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- fnErr
	}()
	return <-errc
}

// String names the namespace for messages.
func (n *NetNS) String() string {
	if n.name != "" {
		return n.name
	}
	return n.path
}
