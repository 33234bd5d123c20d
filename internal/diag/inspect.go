package diag

import (
	"context"
	"fmt"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/proxy"
	"github.com/kdive/kdive/internal/proxy/iptables"
	"github.com/kdive/kdive/internal/proxy/ipvs"
	"github.com/kdive/kdive/internal/proxy/nftables"
)

// InspectProxy reads the proxy state a mode programmed in a node's
// namespace back from the kernel: nftables' table, iptables' chains or
// IPVS' virtual servers, as one proxy.Inspection.
func InspectProxy(ctx context.Context, ns *kernel.NetNS, mode string) (proxy.Inspection, error) {
	switch mode {
	case "nftables":
		return nftables.Inspect(ctx, ns)
	case "iptables":
		return iptables.Inspect(ctx, ns)
	case "ipvs":
		return ipvs.Inspect(ctx, ns)
	}
	return nil, fmt.Errorf("proxy mode %q: want nftables, iptables or ipvs", mode)
}
