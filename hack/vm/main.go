// Command kdive-vm runs one command as root inside a throwaway qemu VM that
// boots the distribution kernel (/boot/vmlinuz-*), so tests can use kernel
// features the host kernel lacks (IPIP, IPVS, dummy). See DESIGN.md, "Kernel
// features and the test VM". Use it through hack/vmrun and hack/vmexec.
//
// Design:
//
//   - The VM has no disk. The host's root is shared read-only over 9p
//     (virtio) and becomes the lower layer of the VM's root, an overlay
//     whose upper layer is a tmpfs, so every host file is visible at the
//     same path and the command may write anywhere (a Kubernetes lab
//     creates mount points under /etc and /var) without touching the host;
//     /tmp and /run are fresh tmpfs; directories passed with --share (and
//     the cwd or command when they live under /tmp or /run) are shared
//     read-write at the same path on top.
//   - cgroup2 alone is mounted at /sys/fs/cgroup, as systemd does on the
//     distribution's kernel, so the lab's cgroup code meets both layouts:
//     the development machines have the v1 hierarchies.
//   - A tiny initramfs (static busybox, the virtio/9p modules and
//     vm_init.sh) mounts that root and enters it with switch_root, not
//     chroot: the kernel's module auto-loading execs /sbin/modprobe from the
//     real root, so after a chroot veth and nf_tables fail. The initramfs is
//     cached, keyed by kernel version and a hash of everything in it; the
//     per-run spec (cwd, environment, argv, shares) is a second small cpio
//     archive appended to it, which the kernel unpacks on top.
//   - qemu boots the kernel's uncompressed vmlinux through its PVH entry
//     point, extracted once from the bzImage into the same cache: the
//     kernel decompressing itself under TCG took 2.5 s of a 5.5 s boot.
//   - The root is mounted with cache=loose: the VM lives seconds and nothing
//     changes the host files it reads meanwhile, and without it every path
//     lookup is a 9p round trip (about 3.5x slower overall).
//   - Output and exit status come back over virtio-serial ports, which are
//     not ttys (no \n -> \r\n, no echo): kdive.stdout and kdive.stderr carry
//     the command's streams separately, kdive.status its exit status as a
//     decimal line. Each port is a qemu file chardev opened on a pipe the
//     runner passes in (/proc/self/fd/N), so output streams live. The kernel
//     log and init messages go to the serial console, which the runner keeps
//     and prints only when the VM dies without a status (or with --console).
//     Under TCG qemu handles a port write before the guest's write returns,
//     so all output is in the pipes before the status; the runner reads
//     them to EOF after qemu exits. The command's stdin is /dev/null.
//   - qemu runs in its own process group with a parent-death signal, and is
//     killed on --timeout (exit 124), on SIGINT/SIGTERM/SIGHUP/SIGQUIT, or when
//     the runner itself dies, so no VM outlives its runner.
//
// Exit status: the command's, or 124 on timeout, 125 when the VM itself
// could not run the command, 128+n when the runner got signal n.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"time"
)

// Exit statuses of the runner itself, as timeout(1) uses them.
const (
	exitTimeout = 124
	exitHarness = 125
)

const usage = `usage: kdive-vm [flags] CMD [ARGS...]

Runs CMD as root inside a qemu VM booted from the distribution kernel, with
the host's files visible at the same paths (read-only, under a throwaway
writable overlay), /tmp and /run as tmpfs, cgroup2 at /sys/fs/cgroup, the
caller's cwd and environment, and KDIVE_IN_VM=1.

Flags:
`

type options struct {
	timeout   time.Duration
	memoryMiB int
	cpus      int
	kernel    string
	cacheDir  string
	shares    []string
	console   bool
	pidFile   string
	argv      []string
}

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	opts, err := parseOptions(args)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "kdive-vm: %v\n", err)
		return exitHarness
	}
	code, err := runVM(opts)
	if err != nil {
		fmt.Fprintf(os.Stderr, "kdive-vm: %v\n", err)
	}
	return code
}

func parseOptions(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("kdive-vm", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usage)
		fs.PrintDefaults()
	}
	timeout, err := envDuration("KDIVE_VM_TIMEOUT", 20*time.Minute)
	if err != nil {
		return o, err
	}
	memory, err := envInt("KDIVE_VM_MEMORY", 2048)
	if err != nil {
		return o, err
	}
	cpus, err := envInt("KDIVE_VM_CPUS", 2)
	if err != nil {
		return o, err
	}
	fs.DurationVar(&o.timeout, "timeout", timeout, "kill the VM and exit 124 after this long (env KDIVE_VM_TIMEOUT)")
	fs.IntVar(&o.memoryMiB, "memory", memory, "VM memory in MiB (env KDIVE_VM_MEMORY)")
	fs.IntVar(&o.cpus, "cpus", cpus, "VM CPUs (env KDIVE_VM_CPUS)")
	fs.StringVar(&o.kernel, "kernel", os.Getenv("KDIVE_VM_KERNEL"),
		"kernel image; default the newest /boot/vmlinuz-* with /lib/modules/<version> (env KDIVE_VM_KERNEL)")
	fs.StringVar(&o.cacheDir, "cache-dir", os.Getenv("KDIVE_VM_CACHE"),
		"where the built initramfs and extracted vmlinux are cached (env KDIVE_VM_CACHE; default "+defaultCacheDir+")")
	fs.Func("share", "share host directory `DIR` read-write at the same path (repeatable)", func(s string) error {
		o.shares = append(o.shares, s)
		return nil
	})
	fs.BoolVar(&o.console, "console", os.Getenv("KDIVE_VM_CONSOLE") == "1",
		"copy the VM's console (kernel log, init) to stderr (env KDIVE_VM_CONSOLE=1)")
	fs.StringVar(&o.pidFile, "pidfile", "", "write qemu's pid to `FILE` once it runs (for tests and supervisors)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	o.argv = fs.Args()
	switch {
	case len(o.argv) == 0:
		fs.Usage()
		return o, errors.New("no command given")
	case o.timeout <= 0:
		return o, fmt.Errorf("--timeout must be positive, got %v", o.timeout)
	case o.memoryMiB < 256:
		return o, fmt.Errorf("--memory must be at least 256 MiB, got %d", o.memoryMiB)
	case o.cpus < 1:
		return o, fmt.Errorf("--cpus must be at least 1, got %d", o.cpus)
	}
	return o, nil
}

func envDuration(name string, def time.Duration) (time.Duration, error) {
	s := os.Getenv(name)
	if s == "" {
		return def, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("parse %s: %w", name, err)
	}
	return d, nil
}

func envInt(name string, def int) (int, error) {
	s := os.Getenv(name)
	if s == "" {
		return def, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Errorf("parse %s: %w", name, err)
	}
	return n, nil
}
