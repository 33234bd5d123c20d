package ipvs

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/model"
)

// apply makes the kernel match r. The order keeps traffic flowing: sets
// and rules before the virtual servers that need them, virtual servers
// before the addresses that attract their traffic; stale addresses go
// before stale virtual servers, stale set entries last. A failure before
// the virtual servers (IPVS, kube-ipvs0, ipsets, iptables) ends the Sync
// there: set entries already added stay, and iptables-restore commits
// each table on its own. A virtual server that fails is put back as it
// was (syncVirtualServer), reported and skipped; the others, and the
// addresses and stale objects, are synced: all or nothing per virtual
// server, not per Sync, as kube-proxy carries on past a service that
// fails.
func (p *Proxier) apply(ctx context.Context, r *Ruleset, changed map[model.ServicePortName]bool) (err error) {
	ns := p.opts.NetNS
	if p.lastFailed {
		changed = nil // what failed last time must be read back in full
	}
	defer func() { p.lastFailed = err != nil }()
	stats := SyncStats{}
	h, err := ns.OpenIPVS()
	if err != nil {
		return fmt.Errorf("ipvs: %w", err)
	}
	defer h.Close()
	if err := p.ensureSysctls(); err != nil {
		return fmt.Errorf("ipvs: %w", err)
	}
	if _, err := ns.EnsureDummy(Device, kernel.LinkAttrs{}); err != nil {
		return fmt.Errorf("ipvs: %w", err)
	}
	sets, err := ns.OpenIPSets()
	if err != nil {
		return fmt.Errorf("ipvs: %w", err)
	}
	defer sets.Close()
	stale, err := addSetEntries(sets, r, &stats)
	if err != nil {
		return fmt.Errorf("ipvs: %w", err)
	}
	staleNames, err := syncNames(sets, r, &stats)
	if err != nil {
		return fmt.Errorf("ipvs: %w", err)
	}
	stale = append(stale, staleNames...)
	if err := p.syncIptables(ctx, r, &stats); err != nil {
		return fmt.Errorf("ipvs: %w", err)
	}

	links, err := ns.Links()
	if err != nil {
		return fmt.Errorf("ipvs: %w", err)
	}
	// Virtual servers on addresses this mode bound (kube-ipvs0's, and the
	// ones KUBE-IPVS-IPS still lists if a crash left it behind) or on node
	// addresses are the mode's.
	owned := localAddrs(links)
	for _, se := range stale {
		if se.set == setIPVSIPs {
			owned[se.entry.IP] = true
		}
	}
	var errs []error
	staleVS, vsErrs := p.syncVirtualServers(h, r, changed, owned, &stats)
	errs = append(errs, vsErrs...)
	staleAddrs, err := p.addAddresses(r, links, &stats)
	if err != nil {
		errs = append(errs, err)
	}
	for _, a := range staleAddrs {
		if err := ns.DelAddr(Device, netip.PrefixFrom(a, 32)); err != nil {
			errs = append(errs, fmt.Errorf("ipvs: %w", err))
			continue
		}
		stats.AddressesDeleted++
	}
	for _, vs := range staleVS {
		if err := h.DeleteVirtualServer(vs); err != nil {
			errs = append(errs, fmt.Errorf("ipvs: %w", err))
			continue
		}
		p.forgetVS(vs.String())
		stats.VirtualServersDeleted++
	}
	for _, se := range stale {
		if err := sets.Del(se.set, se.entry); err != nil {
			errs = append(errs, fmt.Errorf("ipvs: %w", err))
			continue
		}
		stats.SetEntriesDeleted++
	}
	stats.RealServersDraining = len(p.draining)
	p.stats = stats
	p.scheduleReaper()
	if p.reapErr != nil {
		errs = append(errs, p.reapErr)
		p.reapErr = nil
	}
	return errors.Join(errs...)
}

// localAddrs are the namespace's own addresses: a virtual server on one
// of them (a service address on kube-ipvs0, a NodePort on a node address)
// is the mode's to delete when no service wants it.
func localAddrs(links []kernel.Link) map[netip.Addr]bool {
	out := map[netip.Addr]bool{}
	for _, l := range links {
		for _, p := range l.Addrs {
			out[p.Addr()] = true
		}
	}
	return out
}

// addAddresses binds the plan's addresses to kube-ipvs0 and returns the
// ones it holds that the plan no longer has.
func (p *Proxier) addAddresses(r *Ruleset, links []kernel.Link, stats *SyncStats) (stale []netip.Addr, err error) {
	var have []netip.Addr
	for _, l := range links {
		if l.Name != Device {
			continue
		}
		for _, a := range l.Addrs {
			if a.Addr().Is4() {
				have = append(have, a.Addr())
			}
		}
	}
	var errs []error
	for _, a := range r.Addresses {
		if slices.Contains(have, a) {
			continue
		}
		if err := p.opts.NetNS.AddAddr(Device, netip.PrefixFrom(a, 32)); err != nil {
			errs = append(errs, fmt.Errorf("ipvs: %w", err))
			continue
		}
		stats.AddressesAdded++
	}
	for _, a := range have {
		if !slices.Contains(r.Addresses, a) {
			stale = append(stale, a)
		}
	}
	return stale, errors.Join(errs...)
}

type setEntry struct {
	set   string
	entry kernel.IPSetEntry
}

// addSetEntries creates missing sets, adds missing entries (updating an
// entry's skbmark in place) and returns the entries to delete once the
// virtual servers are synced.
func addSetEntries(sets *kernel.IPSets, r *Ruleset, stats *SyncStats) ([]setEntry, error) {
	var stale []setEntry
	for _, s := range r.Sets {
		cur, err := sets.List(s.Name)
		if errors.Is(err, kernel.ErrNotFound) {
			if err := sets.Create(s.IPSetSpec); err != nil {
				return nil, err
			}
			cur = kernel.IPSet{Name: s.Name, Type: s.Type, SkbInfo: s.SkbInfo}
		} else if err != nil {
			return nil, err
		}
		if cur.Type != s.Type || cur.SkbInfo != s.SkbInfo {
			return nil, fmt.Errorf("ipset %s is a %s set (skbinfo %v), want %s (skbinfo %v): clean up the ipvs mode to recreate it",
				s.Name, cur.Type, cur.SkbInfo, s.Type, s.SkbInfo)
		}
		have := map[string]kernel.IPSetEntry{}
		for _, e := range cur.Entries {
			have[e.Key()] = e
		}
		want := map[string]bool{}
		for _, e := range s.Entries {
			want[e.Key()] = true
			if h, ok := have[e.Key()]; ok && h.SkbMark == e.SkbMark {
				continue
			} else if err := sets.Add(s.Name, e, ok); err != nil {
				return nil, err
			}
			stats.SetEntriesAdded++
		}
		for k, e := range have {
			if !want[k] {
				stale = append(stale, setEntry{s.Name, e})
			}
		}
	}
	return stale, nil
}

// ensureSysctls sets what IPVS needs in the node's namespace, as
// kube-proxy does: conntrack for IPVS connections (masquerade needs it),
// expire connections to deleted real servers and persistence templates to
// weight-0 ones (so affinity does not pin clients to a draining endpoint),
// forwarding, and strict ARP so the node answers no ARP for kube-ipvs0's
// addresses. conn_reuse_mode=0 only on kernels before 5.9: there, mode 1
// delayed reused connections by a second; since 5.9 mode 1 (the default)
// is fixed and reschedules a reused port instead of sending it to a
// draining endpoint (kubernetes#93297).
func (p *Proxier) ensureSysctls() error {
	want := [][2]string{
		{"net.ipv4.vs.conntrack", "1"},
		{"net.ipv4.vs.expire_nodest_conn", "1"},
		{"net.ipv4.vs.expire_quiescent_template", "1"},
		{"net.ipv4.ip_forward", "1"},
		{"net.ipv4.conf.all.arp_ignore", "1"},
		{"net.ipv4.conf.all.arp_announce", "2"},
	}
	if fixed, err := kernel.KernelAtLeast(5, 9); err == nil && !fixed {
		want = append(want, [2]string{"net.ipv4.vs.conn_reuse_mode", "0"})
	}
	ns := p.opts.NetNS
	for _, s := range want {
		if cur, err := ns.ReadSysctl(s[0]); err == nil && cur == s[1] {
			continue
		}
		if err := ns.Sysctl(s[0], s[1]); err != nil {
			return err
		}
	}
	return nil
}
