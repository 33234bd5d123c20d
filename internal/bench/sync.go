package bench

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/kdive/kdive/internal/xtables"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/proxy/iptables"
	"github.com/kdive/kdive/internal/proxy/ipvs"
	"github.com/kdive/kdive/internal/proxy/modes"
	"github.com/kdive/kdive/internal/proxy/nftables"
)

// Proxy modes `kdive bench sync` measures.
const (
	ModeNftables = nftables.Mode
	ModeIPTables = iptables.Mode
	ModeIPVS     = ipvs.Mode
)

// SyncModes are the modes --mode all runs, in report order: every one.
var SyncModes = modes.Names()

// SyncNetNSPrefix starts the name of every namespace `kdive bench sync`
// creates.
const SyncNetNSPrefix = "kdive-bench-sync-"

// SyncRun is the result of one (mode, size) measurement: one JSON object
// of `kdive bench sync -o json`. Times are seconds.
type SyncRun struct {
	Mode      string `json:"mode"`
	Flavour   string `json:"flavour,omitempty"` // iptables: nft or legacy
	Services  int    `json:"services"`
	Endpoints int    `json:"endpoints"`

	// FirstSyncSeconds: the whole ruleset into an empty namespace.
	FirstSyncSeconds float64 `json:"firstSyncSeconds"`
	// EndpointChangeSeconds: one endpoint of one service replaced
	// (median of 5); ServiceAddSeconds: one service added (median of 3).
	EndpointChangeSeconds float64 `json:"endpointChangeSeconds"`
	ServiceAddSeconds     float64 `json:"serviceAddSeconds"`
	// NoopSyncSeconds: a Sync told nothing changed (Desired.Changed
	// empty); FullResyncSeconds: a periodic full Sync (Resync) that
	// finds nothing to do.
	NoopSyncSeconds   float64 `json:"noopSyncSeconds"`
	FullResyncSeconds float64 `json:"fullResyncSeconds"`

	// FloorSeconds: the final ruleset, dumped from the synced namespace,
	// loaded into a fresh one in one shot by the kernel's own tools
	// (FloorTool). 0 with FloorNote saying why when not measured.
	FloorSeconds float64 `json:"floorSeconds"`
	FloorTool    string  `json:"floorTool,omitempty"`
	FloorNote    string  `json:"floorNote,omitempty"`

	// Rules are the rules programmed (chains' rules and the jumps into
	// them); Elements set and map elements (nftables) or ipset entries
	// (IPVS); VirtualServers and RealServers IPVS's.
	Rules          int `json:"rules"`
	Elements       int `json:"elements"`
	VirtualServers int `json:"virtualServers,omitempty"`
	RealServers    int `json:"realServers,omitempty"`

	// PeakRSSBytes is the peak RSS of the process that ran the syncs, as
	// its parent's wait4 reports it: the process or a tool it ran (nft,
	// iptables-restore), whichever peaked higher. ProcessRSSBytes is the
	// Go process's own peak.
	PeakRSSBytes    int64 `json:"peakRSSBytes"`
	ProcessRSSBytes int64 `json:"processRSSBytes"`
}

// Label names the run's mode, with the iptables flavour.
func (r SyncRun) Label() string {
	if r.Flavour != "" && r.Mode == ModeIPTables {
		return r.Mode + " (" + r.Flavour + ")"
	}
	return r.Mode
}

func (s SyncSpec) label() string {
	return fmt.Sprintf("%s %d×%d", SyncRun{Mode: s.Mode, Flavour: s.Flavour}.Label(), s.Services, s.Endpoints)
}

// SyncOptions configure RunSync.
type SyncOptions struct {
	// Modes to run; empty or "all" means every mode this kernel has.
	Modes []string
	// Flavours of iptables to run; empty means both (nft and legacy),
	// each only where its tools are installed.
	Flavours []string
	// Services are the sizes (service counts), each with Endpoints
	// endpoints per service.
	Services  []int
	Endpoints int
	// Worker is the command (argv) that runs one measurement in a child
	// process: it reads a SyncSpec on stdin and prints a SyncRun
	// (ServeSyncWorker), e.g. `kdive bench sync --worker`.
	Worker []string
	// Timeout bounds each measurement; 0 means 15 minutes.
	Timeout time.Duration
}

// RunSync measures the control-plane cost of each mode at each size, each
// measurement in a child process (Worker) of its own over a namespace
// created for it, then the floor in another, and reports them. Every
// namespace is deleted before RunSync returns, also when a run fails or
// ctx is cancelled. A mode the kernel lacks is skipped with a note; a run
// that fails is noted and its error returned with the report of the
// others.
func RunSync(ctx context.Context, opts SyncOptions) (*Report, error) {
	if len(opts.Worker) == 0 {
		return nil, errors.New("bench sync: no worker command")
	}
	if opts.Endpoints < 1 || len(opts.Services) == 0 {
		return nil, errors.New("bench sync: need at least one size and 1 endpoint per service")
	}
	for _, n := range opts.Services {
		if n < 1 {
			return nil, fmt.Errorf("bench sync: %d services: need at least 1", n)
		}
	}
	specs, skipped, err := syncSpecs(opts)
	if err != nil {
		return nil, err
	}
	var runs []SyncRun
	var errs []error
	notes := skipped
	for _, spec := range specs {
		if err := ctx.Err(); err != nil {
			errs = append(errs, err)
			break
		}
		run, err := runOne(ctx, opts, spec)
		if err != nil {
			errs = append(errs, err)
			notes = append(notes, fmt.Sprintf("%s: failed: %v", spec.label(), err))
			continue
		}
		runs = append(runs, run)
	}
	return syncReport(runs, notes), errors.Join(errs...)
}

// syncSpecs expands the options into measurements, and notes what this
// machine cannot run.
func syncSpecs(opts SyncOptions) (specs []SyncSpec, notes []string, err error) {
	names := opts.Modes
	if len(names) == 0 || len(names) == 1 && names[0] == "all" {
		names = SyncModes
	}
	flavours := opts.Flavours
	if len(flavours) == 0 {
		flavours = []string{"nft", "legacy"}
	}
	for _, m := range names {
		m = strings.TrimSpace(m)
		mode, err := modes.Get(m)
		if err != nil {
			return nil, nil, fmt.Errorf("bench sync: %w (or all)", err)
		}
		if err := mode.Unavailable(); err != nil {
			note := fmt.Sprintf("%s: skipped, %v", m, err)
			if m == ModeIPVS {
				note += "; `make test` runs it in the test VM"
			}
			notes = append(notes, note)
			continue
		}
		fl := []string{""}
		if m == ModeIPTables {
			fl = nil
			for _, f := range flavours {
				if !xtables.Flavour(f).Valid() {
					return nil, nil, fmt.Errorf("bench sync: iptables flavour %q: want nft or legacy", f)
				}
				if err := xtables.Flavour(f).Tool().Installed(); err != nil {
					notes = append(notes, fmt.Sprintf("iptables (%s): skipped, not installed (%v)", f, err))
					continue
				}
				fl = append(fl, f)
			}
		}
		for _, f := range fl {
			for _, n := range opts.Services {
				specs = append(specs, SyncSpec{Mode: m, Flavour: f, Services: n, Endpoints: opts.Endpoints})
			}
		}
	}
	return specs, notes, nil
}

// runOne measures one spec: a namespace for the worker's syncs, the
// worker, then the floor in a second namespace. Both are deleted on
// return.
func runOne(ctx context.Context, opts SyncOptions, spec SyncSpec) (run SyncRun, err error) {
	timeout := opts.Timeout
	if timeout == 0 {
		timeout = 15 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	id, err := randomID()
	if err != nil {
		return run, err
	}
	nodeName, floorName := SyncNetNSPrefix+id+"-node", SyncNetNSPrefix+id+"-floor"
	// Deleted whatever happens below, before the error is returned.
	defer func() {
		for _, n := range []string{nodeName, floorName} {
			if derr := kernel.DeleteNetNS(n); derr != nil {
				err = errors.Join(err, derr)
			}
		}
	}()
	node, err := kernel.CreateNetNS(nodeName)
	if err != nil {
		return run, fmt.Errorf("bench sync %s: %w", spec.label(), err)
	}
	defer node.Close()
	spec.NetNS = nodeName
	run, err = runWorker(ctx, opts.Worker, spec)
	if err != nil {
		return run, err
	}
	floor, err := kernel.CreateNetNS(floorName)
	if err != nil {
		return run, fmt.Errorf("bench sync %s: %w", spec.label(), err)
	}
	defer floor.Close()
	if err := measureFloor(ctx, spec, node, floor, &run); err != nil {
		return run, fmt.Errorf("bench sync %s: floor: %w", spec.label(), err)
	}
	return run, nil
}

// runWorker runs the worker for spec and adds its peak RSS to its result.
// The worker gets SIGTERM when ctx ends and when this process dies.
func runWorker(ctx context.Context, worker []string, spec SyncSpec) (SyncRun, error) {
	var run SyncRun
	in, err := json.Marshal(spec)
	if err != nil {
		return run, err
	}
	cmd := exec.CommandContext(ctx, worker[0], worker[1:]...)
	cmd.Stdin = bytes.NewReader(in)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 30 * time.Second
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(errb.String())
		if ctx.Err() != nil {
			err = errors.Join(ctx.Err(), err)
		}
		if msg != "" {
			return run, fmt.Errorf("bench sync %s: worker: %w: %s", spec.label(), err, msg)
		}
		return run, fmt.Errorf("bench sync %s: worker: %w", spec.label(), err)
	}
	if err := json.Unmarshal(out.Bytes(), &run); err != nil {
		return run, fmt.Errorf("bench sync %s: worker output %q: %w", spec.label(), out.String(), err)
	}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		run.PeakRSSBytes = ru.Maxrss * 1024 // KiB on Linux
	}
	return run, nil
}

func randomID() (string, error) {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("bench sync: random name: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}
