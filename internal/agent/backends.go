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
	"github.com/kdive/kdive/internal/proxy/iptables"
	"github.com/kdive/kdive/internal/proxy/ipvs"
	"github.com/kdive/kdive/internal/proxy/nftables"
)

// backends is the one place proxy modes are registered. onRepair, when
// not nil, is told what a backend's full sync found changed by someone
// else and put back.
var backends = map[string]func(ns *kernel.NetNS, cfg ProxyConfig, onRepair func([]string)) proxy.Backend{
	"nftables": func(ns *kernel.NetNS, _ ProxyConfig, onRepair func([]string)) proxy.Backend {
		return nftables.New(nftables.Options{NetNS: ns, OnRepair: onRepair})
	},
	"iptables": func(ns *kernel.NetNS, _ ProxyConfig, onRepair func([]string)) proxy.Backend {
		return iptables.New(iptables.Options{NetNS: ns, OnRepair: onRepair})
	},
	"ipvs": func(ns *kernel.NetNS, cfg ProxyConfig, onRepair func([]string)) proxy.Backend {
		return ipvs.New(ipvs.Options{NetNS: ns, Scheduler: cfg.IPVS.Scheduler, OnRepair: onRepair})
	},
}

func newBackend(cfg ProxyConfig, ns *kernel.NetNS, onRepair func([]string)) (proxy.Backend, error) {
	mk, ok := backends[cfg.Mode]
	if !ok {
		return nil, fmt.Errorf("proxy.mode %q is not built into this kdive", cfg.Mode)
	}
	return mk(ns, cfg, onRepair), nil
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
	for m, mk := range backends {
		if m == mode {
			continue
		}
		if err := mk(ns, ProxyConfig{Mode: m}, nil).Cleanup(ctx); err != nil {
			errs = append(errs, fmt.Errorf("clean up %s proxy: %w", m, err))
		}
	}
	return errors.Join(errs...)
}
