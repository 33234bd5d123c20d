package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kdive/kdive/internal/kernel"
)

// Restarting a node's agent, as a kubelet restarts a crashed or updated
// kube-proxy pod: stop it (SIGTERM, or SIGKILL as an OOM kill or a node
// crash would), start it again with the same arguments and log file, and
// wait until its /healthz says it programmed the node. What the old agent
// programmed stays in the kernel meanwhile; the new one adopts it.

// AgentHealthzPort is where a lab agent serves /healthz (kube-proxy's
// port; the lab leaves the agent's default bind address 0.0.0.0:10256).
const AgentHealthzPort = 10256

// RestartOptions configure RestartAgent.
type RestartOptions struct {
	// Kill stops the agent with SIGKILL, sent to its whole process group
	// (the nft or iptables-restore it may be running die with it, as a
	// container's processes do); default SIGTERM to the agent alone.
	Kill bool
	// Grace bounds the wait for a SIGTERMed agent to exit; then it is
	// killed. Default 10s.
	Grace time.Duration
	// Timeout bounds the wait for the new agent to be healthy; default 60s
	// (the test VM is slow).
	Timeout time.Duration
	// Binaries start the agent from the lab's plan when none is running
	// (it crashed, or was stopped by hand); a running one is started again
	// with its own command line. Zero: FindBinaries("").
	Binaries Binaries
}

// Restart is what RestartAgent did.
type Restart struct {
	Node   string `json:"node"`
	OldPID int    `json:"oldPID,omitempty"` // 0: no agent was running
	NewPID int    `json:"newPID"`
	Signal string `json:"signal,omitempty"` // SIGTERM or SIGKILL
	// Signalled is when the old agent was signalled (or, with none
	// running, the new one started).
	Signalled time.Time `json:"signalled"`
	// Forced: the agent outlived Grace after SIGTERM and was killed.
	Forced bool `json:"forced,omitempty"`
	// Stopped is the time from the signal until the old agent and its
	// children were gone; Healthy from the signal until the new agent's
	// /healthz answered 200 (its first sync succeeded).
	Stopped time.Duration `json:"stoppedNs"`
	Healthy time.Duration `json:"healthyNs"`
}

// ErrNoNode is wrapped by errors about a node the lab does not have.
var ErrNoNode = errors.New("no such node")

// RestartAgent restarts the agent of node in the named lab and waits until
// the new one is healthy.
func RestartAgent(ctx context.Context, name, node string, opts RestartOptions) (*Restart, error) {
	s, err := Load(name)
	if err != nil {
		return nil, err
	}
	p := s.Plan
	n, ok := p.Node(node)
	if !ok {
		var names []string
		for _, n := range p.Nodes {
			names = append(names, n.Name)
		}
		return nil, fmt.Errorf("lab %s: node %q: %w (nodes: %s)", name, node, ErrNoNode, strings.Join(names, ", "))
	}
	if p.Kubernetes != nil {
		return nil, fmt.Errorf("lab %s is a Kubernetes lab: its agents are the kdive DaemonSet's pods; restart one by deleting it: "+
			"kubectl --kubeconfig %s -n kube-system delete pod -l k8s-app=kdive --field-selector spec.nodeName=%s",
			name, p.KubeconfigFile(), node)
	}
	if opts.Grace <= 0 {
		opts.Grace = 10 * time.Second
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 60 * time.Second
	}
	ns, err := kernel.OpenNetNS(n.NetNS)
	if err != nil {
		return nil, fmt.Errorf("restart agent of %s: %w", node, err)
	}
	defer ns.Close()

	// One restart of a lab at a time, and none during an apply: two
	// agents of one node would fight over its rules and its ports.
	unlock, err := lock(name)
	if err != nil {
		return nil, err
	}
	r, err := p.replaceAgent(ctx, ns, n, opts)
	unlock()
	if err != nil {
		return r, fmt.Errorf("restart agent of %s: %w", node, err)
	}
	if err := waitHealthy(ctx, ns, r.NewPID, net.JoinHostPort(n.IP.String(), strconv.Itoa(AgentHealthzPort)), opts.Timeout); err != nil {
		return r, fmt.Errorf("restart agent of %s: %w; see %s", node, err, p.agentLog(node))
	}
	r.Healthy = time.Since(r.Signalled)
	return r, nil
}

func (p *Plan) agentLog(node string) string { return filepath.Join(p.nodeDir(node), "agent.log") }

// replaceAgent stops node n's agent (if one runs) and starts the new one.
func (p *Plan) replaceAgent(ctx context.Context, ns *kernel.NetNS, n NodePlan, opts RestartOptions) (*Restart, error) {
	r := &Restart{Node: n.Name}
	logFile := p.agentLog(n.Name)
	pid, argv := p.runningAgent(n.Name)
	if pid != 0 {
		r.OldPID = pid
		r.Signal = "SIGTERM"
		if opts.Kill {
			r.Signal = "SIGKILL"
		}
		note(logFile, fmt.Sprintf("kdive lab restart: %s to agent pid %d", r.Signal, pid))
		r.Signalled = time.Now()
		forced, err := stopGroup(ctx, pid, opts.Kill, opts.Grace)
		if err != nil {
			return r, err
		}
		r.Forced, r.Stopped = forced, time.Since(r.Signalled)
		newPID, err := startProcess(ns, p.Name, logFile, []string{"NODE_NAME=" + n.Name}, argv...)
		if err != nil {
			return r, fmt.Errorf("start %s: %w", argv[0], err)
		}
		r.NewPID = newPID
		return r, nil
	}
	bins := opts.Binaries
	if bins.Kdive == "" {
		var err error
		if bins, err = FindBinaries(""); err != nil {
			return r, err
		}
	}
	note(logFile, "kdive lab restart: no agent running; starting one")
	r.Signalled = time.Now()
	newPID, err := p.startAgent(n, bins, p.Proxy.Mode)
	r.NewPID = newPID
	return r, err
}

// runningAgent is the pid and command line of node's agent, from its pid
// file; 0 when it does not run. The process must still be that agent (a
// pid can be reused): kdive agent of this lab and node.
func (p *Plan) runningAgent(node string) (int, []string) {
	b, err := os.ReadFile(filepath.Join(p.nodeDir(node), "agent.pid"))
	if err != nil {
		return 0, nil
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 || !processAlive(pid) {
		return 0, nil
	}
	argv := procStrings(pid, "cmdline")
	env := procStrings(pid, "environ")
	if len(argv) < 2 || argv[1] != "agent" || !slices.Contains(env, "KDIVE_LAB="+p.Name) {
		return 0, nil
	}
	if i := slices.Index(argv, "--node-name"); i < 0 || i+1 >= len(argv) || argv[i+1] != node {
		return 0, nil
	}
	return pid, argv
}

// procStrings reads a NUL-separated /proc/PID file (cmdline, environ),
// keeping empty strings: `--ipvs-scheduler ""` is two arguments.
func procStrings(pid int, file string) []string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/" + file)
	if err != nil || len(b) == 0 {
		return nil
	}
	return strings.Split(string(bytes.TrimSuffix(b, []byte{0})), "\x00")
}

// stopGroup stops the agent pid (the leader of its own process group,
// startProcess's Setsid) and waits until no process of the group is left,
// so nothing the old agent started can still change the kernel after the
// new one began. SIGKILL goes to the group at once; SIGTERM to the agent,
// which ends its helpers itself, and after grace SIGKILL to the group.
func stopGroup(ctx context.Context, pid int, kill bool, grace time.Duration) (forced bool, err error) {
	if kill {
		if err := syscall.Kill(-pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			return false, fmt.Errorf("kill agent pid %d: %w", pid, err)
		}
	} else if err := syscall.Kill(pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return false, fmt.Errorf("stop agent pid %d: %w", pid, err)
	}
	const killWait = 5 * time.Second
	deadline := time.Now().Add(grace)
	if kill {
		deadline = time.Now().Add(killWait)
	}
	for groupAlive(pid) {
		if time.Now().After(deadline) {
			if kill || forced {
				return forced, fmt.Errorf("agent pid %d (or a process it started) survives SIGKILL", pid)
			}
			forced, deadline = true, time.Now().Add(killWait)
			_ = syscall.Kill(-pid, syscall.SIGKILL)
		}
		select {
		case <-ctx.Done():
			return forced, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	return forced, nil
}

// groupAlive tells whether a process of group pgid still runs (zombies
// don't count: a test that started the agent never reaps it).
func groupAlive(pgid int) bool {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return processAlive(pgid)
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp ...; comm may hold spaces.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 3 || f[0] == "Z" || f[0] == "X" {
			continue
		}
		if g, _ := strconv.Atoi(f[2]); g == pgid || pid == pgid {
			return true
		}
	}
	return false
}

// waitHealthy polls the agent's /healthz inside the node until it answers
// 200, the agent exits, or timeout passes. Connections are dialed in the
// node's namespace (an http.Client's own goroutines are not in it).
func waitHealthy(ctx context.Context, ns *kernel.NetNS, pid int, addr string, timeout time.Duration) error {
	tr := &http.Transport{DisableKeepAlives: true, DialContext: ns.DialContext}
	defer tr.CloseIdleConnections()
	c := http.Client{Transport: tr, Timeout: time.Second}
	deadline := time.Now().Add(timeout)
	last := "no answer"
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/healthz", nil)
		if err != nil {
			return err
		}
		resp, err := c.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		if !processAlive(pid) {
			return fmt.Errorf("the new agent (pid %d) exited", pid)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the new agent (pid %d) is not healthy after %s: /healthz: %s", pid, timeout, last)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// note appends a line to a lab log, so the agent's log shows where one
// agent ended and the next began.
func note(logFile, msg string) {
	f, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return
	}
	defer f.Close()
	fmt.Fprintf(f, "time=%s level=INFO msg=%q\n", time.Now().UTC().Format(time.RFC3339Nano), msg)
}
