package podnet

import (
	"context"
	"errors"
	"fmt"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/nft"
)

// Cleanup removes everything podnet owns on the node, whatever process or
// mode created it: every main-table route marked RouteProtocolAgent and
// every tunnel device podnet owns (FDB and neighbour entries go with the
// VXLAN device; tunl0, which cannot be deleted, is released) and the
// natOutgoing table. Sysctls are
// left as they are. It needs no State, so it also cleans up after an agent
// that is gone.
func (r *Reconciler) Cleanup(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	ns := r.opts.NetNS
	if ns == nil {
		return errors.New("podnet cleanup: no network namespace given")
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("podnet cleanup: %w", err)
	}
	routes, err := ns.Routes()
	if err != nil {
		return fmt.Errorf("podnet cleanup: %w", err)
	}
	var errs []error
	for _, rt := range routes {
		if rt.Protocol != kernel.RouteProtocolAgent {
			continue
		}
		if err := ns.DeleteRoute(rt); err != nil {
			errs = append(errs, fmt.Errorf("podnet cleanup: route %s: %w", rt.Dst, err))
			continue
		}
		if r.opts.OnChange != nil {
			r.opts.OnChange(Change{Action: "delete", Object: "route " + rt.String()})
		}
	}
	for _, err := range removeTunnels(ns, func(string) bool { return true }, r.opts.OnChange) {
		errs = append(errs, fmt.Errorf("podnet cleanup: %w", err))
	}
	if has, err := nft.HasTable(ns, natTable); err != nil {
		errs = append(errs, fmt.Errorf("podnet cleanup: %w", err))
	} else if has {
		if err := nft.New(ns).Run(ctx, removeNATTable()); err != nil {
			errs = append(errs, fmt.Errorf("podnet cleanup: nftables table %s: %w", NATTable, err))
		} else if r.opts.OnChange != nil {
			r.opts.OnChange(Change{Action: "delete", Object: "nftables table " + NATTable})
		}
	}
	return errors.Join(errs...)
}

// owned reports whether a tunnel device is podnet's: marked with LinkAlias,
// or the VXLAN device by its name (an alias can be overwritten by hand).
func owned(t kernel.Tunnel) bool {
	return t.Alias == LinkAlias || (t.Kind == kernel.TunnelVXLAN && t.Name == VXLANDevice)
}

// removeTunnels deletes (or, for tunl0, releases) the podnet-owned tunnel
// devices for which remove is true.
func removeTunnels(ns *kernel.NetNS, remove func(name string) bool, report func(Change)) []error {
	ts, err := ns.Tunnels()
	if err != nil {
		return []error{err}
	}
	var errs []error
	for _, t := range ts {
		if !owned(t) || !remove(t.Name) {
			continue
		}
		if err := ns.DeleteTunnel(t.Name); err != nil {
			errs = append(errs, fmt.Errorf("tunnel %s: %w", t.Name, err))
			continue
		}
		if report != nil {
			report(Change{Action: "delete", Object: "link " + t.String()})
		}
	}
	return errs
}
