package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// killGrace is how long qemu gets to exit after SIGTERM before SIGKILL.
const killGrace = 3 * time.Second

// kernelCmdline keeps the console quiet (it is only read when something
// fails) and turns a panic into an immediate exit (panic=-1 + -no-reboot).
const kernelCmdline = "console=ttyS0 quiet loglevel=4 panic=-1 rdinit=/init"

// runVM prepares the kernel, initramfs and spec, runs the VM, and returns the
// runner's exit status.
func runVM(o options) (int, error) {
	qemu, err := findQEMU()
	if err != nil {
		return exitHarness, err
	}
	k, err := findKernel(o.kernel)
	if err != nil {
		return exitHarness, err
	}
	busybox, err := findBusybox()
	if err != nil {
		return exitHarness, err
	}
	s, err := newSpec(o.argv, o.shares, os.Environ())
	if errors.Is(err, errNotFound) {
		return 127, err
	}
	if err != nil {
		return exitHarness, err
	}
	cacheDir, err := ensureCacheDir(o.cacheDir)
	if err != nil {
		return exitHarness, err
	}
	base, err := cachedInitramfs(cacheDir, k, busybox)
	if err != nil {
		return exitHarness, err
	}
	image, err := bootImage(cacheDir, k)
	if err != nil && o.console {
		fmt.Fprintf(os.Stderr, "kdive-vm: booting the compressed kernel (slower): %v\n", err)
	}
	initrd, err := runInitrd(base, s.script())
	if err != nil {
		return exitHarness, err
	}
	defer initrd.Close()
	m := machine{qemu: qemu, kernel: image, initrd: initrd, opts: o, shares: s.shares}
	return m.run()
}

// machine is one qemu invocation.
type machine struct {
	qemu   string
	kernel string
	initrd *os.File // unlinked; passed as the fd after the pipes
	opts   options
	shares []string
}

// Indexes of the pipes qemu writes into, passed as fds 3.. (ExtraFiles);
// the initrd follows them.
const (
	pipeConsole = iota
	pipeStdout
	pipeStderr
	pipeStatus
	numPipes
)

func (m machine) args() []string {
	fd := func(i int) string { return "/proc/self/fd/" + strconv.Itoa(3+i) }
	a := []string{
		"-name", "kdive-vm", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		// KVM is exposed on our CI machines but hangs under nesting.
		"-accel", "tcg,thread=multi", "-cpu", "max",
		"-smp", strconv.Itoa(m.opts.cpus), "-m", strconv.Itoa(m.opts.memoryMiB),
		"-kernel", m.kernel, "-initrd", fd(numPipes), "-append", kernelCmdline,
		"-chardev", "file,id=console,path=" + fd(pipeConsole), "-serial", "chardev:console",
		"-device", "virtio-serial-pci,id=ports",
	}
	for _, p := range []struct {
		pipe int
		id   string
	}{{pipeStdout, "stdout"}, {pipeStderr, "stderr"}, {pipeStatus, "status"}} {
		a = append(a, "-chardev", "file,id="+p.id+",path="+fd(p.pipe),
			"-device", "virtserialport,bus=ports.0,chardev="+p.id+",name=kdive."+p.id)
	}
	a = append(a, "-virtfs", "local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap")
	for i, d := range m.shares {
		a = append(a, "-virtfs", "local,path="+d+",mount_tag="+shareTag(i)+",security_model=none,multidevs=remap")
	}
	return a
}

// run starts qemu and waits for it, copying the command's output through,
// and returns the command's exit status.
func (m machine) run() (int, error) {
	// Pdeathsig fires when the thread that started qemu exits, so keep this
	// goroutine on its thread for the VM's whole life.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT)
	defer signal.Stop(sigs)

	vm, err := m.start()
	if err != nil {
		return exitHarness, err
	}
	timer := time.NewTimer(m.opts.timeout)
	defer timer.Stop()
	var waitErr error
	select {
	case waitErr = <-vm.done:
	case <-timer.C:
		vm.stop()
		return exitTimeout, fmt.Errorf("timed out after %v running %s; stopped the VM", m.opts.timeout, m.opts.argv[0])
	case sig := <-sigs:
		vm.stop()
		n, _ := sig.(syscall.Signal)
		return 128 + int(n), fmt.Errorf("got %v; stopped the VM", sig)
	}
	vm.copies.Wait()
	if code, err := strconv.Atoi(strings.TrimSpace(vm.status.String())); err == nil {
		return code, nil
	}
	return exitHarness, fmt.Errorf("the VM stopped after %v without reporting the command's exit status (qemu: %v)\n%s%s",
		time.Since(vm.started).Round(time.Millisecond), exitText(waitErr),
		indent("qemu", vm.qemuErr.String()), indent("console", vm.console.String()))
}

// process is a running qemu and the goroutines draining its pipes.
type process struct {
	cmd     *exec.Cmd
	started time.Time
	done    chan error // cmd.Wait's result
	copies  sync.WaitGroup
	qemuErr bytes.Buffer
	console tailBuffer
	status  bytes.Buffer
}

// start runs qemu with its chardevs on pipes (fds 3..) and starts copying
// them: console to a tail buffer, the command's streams to ours, the status
// to a buffer.
func (m machine) start() (*process, error) {
	var readers, writers [numPipes]*os.File
	for i := range numPipes {
		r, w, err := os.Pipe()
		if err != nil {
			return nil, fmt.Errorf("create pipe for qemu: %w", err)
		}
		readers[i], writers[i] = r, w
	}
	p := &process{cmd: exec.Command(m.qemu, m.args()...), done: make(chan error, 1)}
	p.cmd.ExtraFiles = append(writers[:], m.initrd)
	p.cmd.Stderr = &p.qemuErr
	// Own process group: a terminal's ^C reaches only the runner, which
	// stops the VM itself. Pdeathsig: if the runner dies, so does qemu.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	p.started = time.Now()
	err := p.cmd.Start()
	for _, w := range writers {
		w.Close()
	}
	if err != nil {
		for _, r := range readers {
			r.Close()
		}
		return nil, fmt.Errorf("start qemu: %w", err)
	}
	go func() { p.done <- p.cmd.Wait() }()

	var consoleOut io.Writer = &p.console
	if m.opts.console {
		consoleOut = io.MultiWriter(&p.console, os.Stderr)
	}
	for i, w := range [numPipes]io.Writer{consoleOut, os.Stdout, os.Stderr, &p.status} {
		p.copies.Go(func() {
			defer readers[i].Close()
			drain(w, readers[i])
		})
	}
	if m.opts.pidFile != "" {
		if err := os.WriteFile(m.opts.pidFile, []byte(strconv.Itoa(p.cmd.Process.Pid)+"\n"), 0o644); err != nil {
			p.stop()
			return nil, fmt.Errorf("write pid file: %w", err)
		}
	}
	return p, nil
}

// stop ends qemu's process group: SIGTERM lets qemu exit cleanly, SIGKILL
// follows after killGrace. It returns once qemu and the copies are done.
func (p *process) stop() {
	pgid := p.cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(killGrace):
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-p.done
	}
	p.copies.Wait()
}

// drain copies r to w, and keeps reading r when w fails so that qemu never
// blocks on a full pipe.
func drain(w io.Writer, r io.Reader) {
	if _, err := io.Copy(w, r); err != nil {
		_, _ = io.Copy(io.Discard, r)
	}
}

func exitText(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

func indent(title, text string) string {
	text = strings.TrimRight(text, "\n")
	if text == "" {
		return ""
	}
	return "--- " + title + " ---\n" + text + "\n"
}

// tailBuffer keeps the last tailSize bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
}

const tailSize = 64 << 10

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - tailSize; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}
