package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kdive/kdive/internal/fileutil"
	"github.com/kdive/kdive/internal/kernel"
)

// Binaries are the programs a lab runs: kdive (agents, echo servers) and
// the CNI plugin.
type Binaries struct {
	Kdive    string
	KdiveCNI string
}

// FindBinaries locates kdive (this executable unless given) and
// kdive-cni (beside kdive, else on PATH).
func FindBinaries(kdive string) (Binaries, error) {
	if kdive == "" {
		exe, err := os.Executable()
		if err != nil {
			return Binaries{}, fmt.Errorf("find kdive: %w", err)
		}
		kdive = exe
	}
	b := Binaries{Kdive: kdive, KdiveCNI: filepath.Join(filepath.Dir(kdive), "kdive-cni")}
	if _, err := os.Stat(b.KdiveCNI); err != nil {
		p, lerr := exec.LookPath("kdive-cni")
		if lerr != nil {
			return Binaries{}, fmt.Errorf("kdive-cni is neither beside %s nor on PATH (make build puts both in bin/)", kdive)
		}
		b.KdiveCNI = p
	}
	for _, p := range []*string{&b.Kdive, &b.KdiveCNI} {
		abs, err := filepath.Abs(*p)
		if err != nil {
			return Binaries{}, err
		}
		*p = abs
	}
	return b, nil
}

// Paths under a lab's run directory.
func (p *Plan) storeDir() string           { return filepath.Join(Dir(p.Name), "store") }
func (p *Plan) nodeDir(node string) string { return filepath.Join(Dir(p.Name), "nodes", node) }
func (p *Plan) confDir(node string) string { return filepath.Join(p.nodeDir(node), "net.d") }
func (p *Plan) ipamDir(node string) string { return filepath.Join(p.nodeDir(node), "ipam") }
func (p *Plan) cniBinDir() string          { return filepath.Join(Dir(p.Name), "cni", "bin") }
func (p *Plan) cniCacheDir() string        { return filepath.Join(Dir(p.Name), "cni", "cache") }
func (p *Plan) podsDir() string            { return filepath.Join(Dir(p.Name), "pods") }

// PodNetNS is the network namespace of a lab pod. Lab and Kubernetes
// namespace names have no dots, so the name splits unambiguously.
func PodNetNS(lab, namespace, name string) string {
	return NetNSPrefix(lab) + "pod." + namespace + "." + name
}

// startProcess starts a lab process (an agent, an echo server) in a
// namespace, detached in its own session so it outlives the command that
// started it, logging to logFile. Its environment names the lab.
func startProcess(ns *kernel.NetNS, lab, logFile string, env []string, argv ...string) (int, error) {
	if err := os.MkdirAll(filepath.Dir(logFile), 0o755); err != nil {
		return 0, err
	}
	log, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return 0, err
	}
	defer log.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(append(os.Environ(), "KDIVE_LAB="+lab), env...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := ns.Start(cmd); err != nil {
		return 0, err
	}
	pid := cmd.Process.Pid
	// Nobody waits for it: the lab's processes are reaped by init once
	// this command exits, and killed by lab down.
	_ = cmd.Process.Release()
	if err := fileutil.WriteAtomic(strings.TrimSuffix(logFile, ".log")+".pid", []byte(strconv.Itoa(pid)+"\n"), 0o644); err != nil {
		return pid, err
	}
	return pid, nil
}

// processAlive tells whether pid still runs (and is not a zombie).
func processAlive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil && errors.Is(err, syscall.ESRCH) {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i < 0 || i+2 >= len(b) || (b[i+2] != 'Z' && b[i+2] != 'X')
}

// waitListening waits until process pid has a socket on each of the
// given ports ("tcp:8080", "udp:53"), read from its /proc/PID/net tables,
// so a pod counts as started only once its server answers.
func waitListening(ctx context.Context, pid int, ports []string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		missing := missingPorts(pid, ports)
		if len(missing) == 0 {
			return nil
		}
		if !processAlive(pid) {
			return fmt.Errorf("process %d exited before listening on %s", pid, strings.Join(missing, ", "))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("process %d does not listen on %s after %s", pid, strings.Join(missing, ", "), timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func missingPorts(pid int, ports []string) []string {
	have := map[string]bool{}
	for _, proto := range []string{"tcp", "tcp6", "udp", "udp6"} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, proto))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) < 4 {
				continue
			}
			// A TCP socket must be listening (state 0A); UDP ones are bound.
			if strings.HasPrefix(proto, "tcp") && f[3] != "0A" {
				continue
			}
			_, hexPort, _ := strings.Cut(f[1], ":")
			port, err := strconv.ParseUint(hexPort, 16, 16)
			if err == nil {
				have[strings.TrimSuffix(proto, "6")+":"+strconv.FormatUint(port, 10)] = true
			}
		}
	}
	var missing []string
	for _, p := range ports {
		if !have[p] {
			missing = append(missing, p)
		}
	}
	return missing
}
