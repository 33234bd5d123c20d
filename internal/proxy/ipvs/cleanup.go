package ipvs

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/kdive/kdive/internal/kernel"
)

// cleanup removes the mode's state, in the order that lets each part go:
// virtual servers and kube-ipvs0 first (traffic stops being balanced),
// then the iptables rules (in both back ends), then the ipsets they
// referenced. It goes on past errors and reports them all.
func (p *Proxier) cleanup(ctx context.Context) error {
	ns := p.opts.NetNS
	var errs []error
	if kernel.IPVSLoaded() {
		if err := cleanupVirtualServers(ns); err != nil {
			errs = append(errs, err)
		}
	}
	if err := ns.DeleteLink(Device); err != nil {
		errs = append(errs, fmt.Errorf("ipvs: %w", err))
	}
	if err := cleanupIptables(ctx, ns); err != nil {
		errs = append(errs, fmt.Errorf("ipvs: %w", err))
	}
	if err := cleanupSets(ns); err != nil {
		errs = append(errs, fmt.Errorf("ipvs: %w", err))
	}
	p.applied, p.draining, p.flavour = nil, nil, ""
	return errors.Join(errs...)
}

// cleanupVirtualServers deletes the virtual servers that are the mode's:
// on an address of the namespace (kube-ipvs0's, a node address) or one
// KUBE-IPVS-IPS lists, or with one of its firewall marks.
func cleanupVirtualServers(ns *kernel.NetNS) error {
	h, err := ns.OpenIPVS()
	if err != nil {
		return fmt.Errorf("ipvs: %w", err)
	}
	defer h.Close()
	links, err := ns.Links()
	if err != nil {
		return fmt.Errorf("ipvs: %w", err)
	}
	local := localAddrs(links)
	for _, a := range boundAddrs(ns) {
		local[a] = true
	}
	vss, err := h.VirtualServers()
	if err != nil {
		return fmt.Errorf("ipvs: %w", err)
	}
	var errs []error
	for _, vs := range vss {
		if ourMark(vs.FWMark) || vs.FWMark == 0 && local[vs.Address] {
			if err := h.DeleteVirtualServer(vs); err != nil {
				errs = append(errs, fmt.Errorf("ipvs: %w", err))
			}
		}
	}
	return errors.Join(errs...)
}

// boundAddrs are the addresses KUBE-IPVS-IPS says the mode bound, if it
// can tell.
func boundAddrs(ns *kernel.NetNS) []netip.Addr {
	if !kernel.IPSetLoaded() {
		return nil
	}
	sets, err := ns.OpenIPSets()
	if err != nil {
		return nil
	}
	defer sets.Close()
	set, err := sets.List(setIPVSIPs)
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, e := range set.Entries {
		out = append(out, e.IP)
	}
	return out
}

func cleanupSets(ns *kernel.NetNS) error {
	if !kernel.IPSetLoaded() {
		return nil
	}
	sets, err := ns.OpenIPSets()
	if err != nil {
		return err
	}
	defer sets.Close()
	var errs []error
	for _, s := range newSets() {
		if err := sets.Destroy(s.Name); err != nil {
			errs = append(errs, err)
		}
	}
	if err := sets.Destroy(setNames); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
