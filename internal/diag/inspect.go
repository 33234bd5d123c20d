package diag

import (
	"context"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/proxy"
	"github.com/kdive/kdive/internal/proxy/modes"
)

// InspectProxy reads the proxy state a mode programmed in a node's
// namespace back from the kernel: nftables' table, iptables' chains or
// IPVS' virtual servers, as one proxy.Inspection.
func InspectProxy(ctx context.Context, ns *kernel.NetNS, mode string) (proxy.Inspection, error) {
	m, err := modes.Get(mode)
	if err != nil {
		return nil, err
	}
	return m.Inspect(ctx, ns)
}
