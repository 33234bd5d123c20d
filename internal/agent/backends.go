package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/kdive/kdive/internal/fileutil"
	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/proxy"
	"github.com/kdive/kdive/internal/proxy/modes"
)

// newBackend builds the configured mode's backend (internal/proxy/modes
// lists them). onRepair, when not nil, is told what a backend's full sync
// found changed by someone else and put back.
func newBackend(cfg ProxyConfig, ns *kernel.NetNS, onRepair func([]string)) (proxy.Backend, error) {
	m, err := modes.Get(cfg.Mode)
	if err != nil {
		return nil, fmt.Errorf("proxy.mode: %w", err)
	}
	return m.New(modes.Options{NetNS: ns, IPVSScheduler: cfg.IPVS.Scheduler, OnRepair: onRepair}), nil
}

// switchedModes tells whether this node's proxy mode differs from the
// one recorded in stateDir (or none is recorded), and records mode. Other
// modes are cleaned up only then: ipvs and iptables share chain names, so
// cleaning up on every start would briefly break ipvs mode.
func switchedModes(stateDir, mode string) bool {
	file := filepath.Join(stateDir, "proxy-mode")
	b, err := os.ReadFile(file)
	switched := err != nil || strings.TrimSpace(string(b)) != mode
	if err := os.MkdirAll(stateDir, 0o755); err == nil {
		_ = fileutil.WriteAtomic(file, []byte(mode+"\n"), 0o644)
	}
	return switched
}

// cleanupOtherModes removes what any other proxy mode programmed on this
// node, so switching modes (or to none) leaves nothing of the old one.
func cleanupOtherModes(ctx context.Context, mode string, ns *kernel.NetNS) error {
	var errs []error
	for _, m := range modes.All() {
		if m.Name == mode {
			continue
		}
		if err := m.New(modes.Options{NetNS: ns}).Cleanup(ctx); err != nil {
			errs = append(errs, fmt.Errorf("clean up %s proxy: %w", m.Name, err))
		}
	}
	return errors.Join(errs...)
}
