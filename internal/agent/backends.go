package agent

import (
	"fmt"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/proxy"
)

// newBackend is the one place proxy modes are registered.
func newBackend(mode string, ns *kernel.NetNS) (proxy.Backend, error) {
	switch mode {
	}
	return nil, fmt.Errorf("proxy.mode %q is not built into this kdive", mode)
}
