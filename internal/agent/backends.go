package agent

import (
	"context"
	"errors"
	"fmt"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/proxy"
	"github.com/kdive/kdive/internal/proxy/iptables"
	"github.com/kdive/kdive/internal/proxy/nftables"
)

// backends is the one place proxy modes are registered.
var backends = map[string]func(ns *kernel.NetNS) proxy.Backend{
	"nftables": func(ns *kernel.NetNS) proxy.Backend { return nftables.New(nftables.Options{NetNS: ns}) },
	"iptables": func(ns *kernel.NetNS) proxy.Backend { return iptables.New(iptables.Options{NetNS: ns}) },
}

func newBackend(mode string, ns *kernel.NetNS) (proxy.Backend, error) {
	mk, ok := backends[mode]
	if !ok {
		return nil, fmt.Errorf("proxy.mode %q is not built into this kdive", mode)
	}
	return mk(ns), nil
}

// cleanupOtherModes removes what any other proxy mode programmed on this
// node, so switching modes (or to none) leaves nothing of the old one.
func cleanupOtherModes(ctx context.Context, mode string, ns *kernel.NetNS) error {
	var errs []error
	for m, mk := range backends {
		if m == mode {
			continue
		}
		if err := mk(ns).Cleanup(ctx); err != nil {
			errs = append(errs, fmt.Errorf("clean up %s proxy: %w", m, err))
		}
	}
	return errors.Join(errs...)
}
