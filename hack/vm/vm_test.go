package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The test binary doubles as the runner: with this variable set it runs
// main's logic instead of the tests, so the tests exercise the real process
// (exit status, signals, Pdeathsig) without building anything.
const asRunnerEnv = "KDIVE_VM_TEST_AS_RUNNER"

func TestMain(m *testing.M) {
	if os.Getenv(asRunnerEnv) == "1" {
		os.Exit(run(os.Args[1:]))
	}
	os.Exit(m.Run())
}

func TestShellQuote(t *testing.T) {
	for _, s := range []string{"", "plain", "it's", "a b\tc\nd", `$HOME "x" \ ; * ?`, "''"} {
		out, err := exec.Command("sh", "-c", "printf %s "+shellQuote(s)).Output()
		if err != nil {
			t.Fatalf("sh printf %q: %v", s, err)
		}
		if string(out) != s {
			t.Errorf("shellQuote(%q) read back as %q", s, out)
		}
	}
}

func TestVersionLess(t *testing.T) {
	for _, c := range []struct{ a, b string }{
		{"6.1.0-9-amd64", "6.1.0-56-amd64"},
		{"5.10.0-30-amd64", "6.1.0-1-amd64"},
		{"6.1.0-56-amd64", "6.12.9-amd64"},
	} {
		if !versionLess(c.a, c.b) || versionLess(c.b, c.a) {
			t.Errorf("want %s < %s", c.a, c.b)
		}
	}
}

func TestResolveModules(t *testing.T) {
	dir := t.TempDir()
	dep := "kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/fscache/fscache.ko kernel/fs/netfs/netfs.ko\n" +
		"kernel/net/9p/9pnet.ko:\nkernel/fs/fscache/fscache.ko: kernel/fs/netfs/netfs.ko\n" +
		"kernel/fs/netfs/netfs.ko:\n"
	if err := os.WriteFile(filepath.Join(dir, "modules.dep"), []byte(dep), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte("kernel/drivers/virtio/virtio.ko\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	mods, err := resolveModules(dir, []string{"virtio", "9p"})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, m := range mods {
		names = append(names, m.name)
	}
	if got, want := strings.Join(names, " "), "netfs fscache 9pnet 9p"; got != want {
		t.Errorf("load order %q, want %q", got, want)
	}
	if _, err := resolveModules(dir, []string{"nosuch"}); err == nil {
		t.Error("resolving a missing module succeeded")
	}
}

func TestCleanShares(t *testing.T) {
	dir := t.TempDir()
	sub := filepath.Join(dir, "sub")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	got, err := cleanShares([]string{sub, dir, dir + "/"})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0] != dir {
		t.Errorf("cleanShares = %q, want [%s]", got, dir)
	}
	if _, err := cleanShares([]string{filepath.Join(dir, "missing")}); err == nil {
		t.Error("sharing a missing directory succeeded")
	}
}

// requireVM skips when this machine cannot run the VM, saying why.
func requireVM(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("boots VMs; skipped in -short mode")
	}
	if _, err := findQEMU(); err != nil {
		t.Skip(err)
	}
	k, err := findKernel(os.Getenv("KDIVE_VM_KERNEL"))
	if err != nil {
		t.Skip(err)
	}
	if f, err := os.Open(k.image); err != nil {
		t.Skipf("cannot read the VM kernel (run as root): %v", err)
	} else {
		f.Close()
	}
	if _, err := findBusybox(); err != nil {
		t.Skip(err)
	}
}

// runner returns the test binary set up to act as kdive-vm.
func runner(args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), asRunnerEnv+"=1")
	return cmd
}

func exitCode(t *testing.T, err error) int {
	t.Helper()
	var ee *exec.ExitError
	if err == nil {
		return 0
	}
	if !errors.As(err, &ee) {
		t.Fatalf("run kdive-vm: %v", err)
	}
	return ee.ExitCode()
}

func TestVMOutputAndExitStatus(t *testing.T) {
	requireVM(t)
	var stdout, stderr bytes.Buffer
	cmd := runner("sh", "-c", "echo out; echo err >&2; exit 7")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	code := exitCode(t, cmd.Run())
	t.Logf("VM ran the command in %v", time.Since(start).Round(time.Millisecond))
	if code != 7 || stdout.String() != "out\n" || stderr.String() != "err\n" {
		t.Errorf("got exit %d, stdout %q, stderr %q; want 7, %q, %q", code, stdout.String(), stderr.String(), "out\n", "err\n")
	}
}

func TestVMTimeout(t *testing.T) {
	requireVM(t)
	pidFile := filepath.Join(t.TempDir(), "qemu.pid")
	var stderr bytes.Buffer
	cmd := runner("--timeout", "4s", "--pidfile", pidFile, "sleep", "100")
	cmd.Stderr = &stderr
	code := exitCode(t, cmd.Run())
	if code != exitTimeout || !strings.Contains(stderr.String(), "timed out after 4s") {
		t.Errorf("got exit %d, stderr %q; want %d and a timeout message", code, stderr.String(), exitTimeout)
	}
	requireGone(t, readPid(t, pidFile))
}

func TestVMRunnerKilled(t *testing.T) {
	requireVM(t)
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		t.Run(sig.String(), func(t *testing.T) {
			pidFile := filepath.Join(t.TempDir(), "qemu.pid")
			cmd := runner("--pidfile", pidFile, "sleep", "100")
			if err := cmd.Start(); err != nil {
				t.Fatalf("start kdive-vm: %v", err)
			}
			pid := waitPid(t, pidFile)
			time.Sleep(time.Second) // let the guest start booting
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatalf("signal kdive-vm: %v", err)
			}
			code := exitCode(t, cmd.Wait())
			if sig == syscall.SIGTERM && code != 128+int(sig) {
				t.Errorf("runner exited %d on %v, want %d", code, sig, 128+int(sig))
			}
			requireGone(t, pid)
		})
	}
}

func readPid(t *testing.T, file string) int {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("read qemu pid: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		t.Fatalf("parse qemu pid: %v", err)
	}
	return pid
}

func waitPid(t *testing.T, file string) int {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if data, err := os.ReadFile(file); err == nil && bytes.HasSuffix(data, []byte("\n")) {
			return readPid(t, file)
		}
	}
	t.Fatal("kdive-vm wrote no qemu pid within 30s")
	return 0
}

// requireGone fails unless process pid exits (or is a zombie) within a few
// seconds.
func requireGone(t *testing.T, pid int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			return
		}
		if _, after, ok := bytes.Cut(stat, []byte(") ")); ok && bytes.HasPrefix(after, []byte("Z")) {
			return
		}
	}
	cmdline, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	t.Errorf("qemu (pid %d) still runs after its runner ended: %s", pid, bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '}))
	_ = syscall.Kill(pid, syscall.SIGKILL)
}
