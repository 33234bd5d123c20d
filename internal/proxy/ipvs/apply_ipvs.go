package ipvs

import (
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/model"
)

// appliedVS is a virtual server as the last Sync left it.
type appliedVS struct {
	vs      kernel.VirtualServer
	service model.ServicePortName
	rs      []kernel.RealServer
}

// drainKey names a real server of a virtual server.
type drainKey struct {
	vs string
	rs netip.AddrPort
}

// drainState is a real server at weight 0 waiting for its connections.
type drainState struct {
	since time.Time
	vs    kernel.VirtualServer
}

func sameVS(a, b kernel.VirtualServer) bool {
	return a.Scheduler == b.Scheduler && a.Flags == b.Flags && a.Timeout == b.Timeout
}

// syncVirtualServers adds and updates the plan's virtual servers and
// their real servers, and returns the kernel's virtual servers that are
// the mode's (on an owned address or with one of its firewall marks) but
// no longer planned. With changed, virtual servers of unchanged services
// that the last Sync left as planned are not read back.
func (p *Proxier) syncVirtualServers(h *kernel.IPVS, r *Ruleset, changed map[model.ServicePortName]bool,
	owned map[netip.Addr]bool, stats *SyncStats) (stale []kernel.VirtualServer, errs []error) {
	cur, err := h.VirtualServers()
	if err != nil {
		return nil, []error{fmt.Errorf("ipvs: %w", err)}
	}
	have := map[string]kernel.VirtualServer{}
	for _, vs := range cur {
		have[vs.String()] = vs
	}
	if p.applied == nil {
		p.applied = map[string]appliedVS{}
	}
	planned := map[string]bool{}
	for _, vs := range r.VirtualServers {
		key := vs.Key()
		planned[key] = true
		if err := p.syncVirtualServer(h, vs, have, changed, stats); err != nil {
			errs = append(errs, fmt.Errorf("sync service %s: ipvs: %w", vs.Service, err))
			delete(p.applied, key)
			continue
		}
		p.applied[key] = appliedVS{vs: vs.VirtualServer, service: vs.Service, rs: vs.RealServers}
	}
	for key, vs := range have {
		if planned[key] {
			continue
		}
		if ourMark(vs.FWMark) || vs.FWMark == 0 && owned[vs.Address] {
			stale = append(stale, vs)
		}
	}
	return stale, errs
}

// syncVirtualServer makes one virtual server and its real servers the
// planned ones, all or nothing: when a call fails, what it changed of this
// virtual server is put back (a new one deleted again, an updated one's
// settings and real servers restored, draining state included) before the
// error is returned, so the kernel holds it either as planned or as it was.
func (p *Proxier) syncVirtualServer(h *kernel.IPVS, vs VirtualServer, have map[string]kernel.VirtualServer,
	changed map[model.ServicePortName]bool, stats *SyncStats) (err error) {
	key := vs.Key()
	cur, ok := have[key]
	counted := *stats
	switch {
	case !ok:
		if err := h.AddVirtualServer(vs.VirtualServer); err != nil {
			return err
		}
		stats.VirtualServersAdded++
		for _, rs := range vs.RealServers {
			if err := h.AddRealServer(vs.VirtualServer, rs); err != nil {
				*stats = counted
				if derr := h.DeleteVirtualServer(vs.VirtualServer); derr != nil {
					return fmt.Errorf("%w; deleting the new virtual server again: %w", err, derr)
				}
				return err
			}
			stats.RealServersAdded++
		}
		return nil
	case !sameVS(cur, vs.VirtualServer):
		if err := h.UpdateVirtualServer(vs.VirtualServer); err != nil {
			return err
		}
		stats.VirtualServersUpdated++
		defer func() {
			if err != nil {
				*stats = counted
				if uerr := h.UpdateVirtualServer(cur); uerr != nil {
					err = fmt.Errorf("%w; restoring the virtual server's settings: %w", err, uerr)
				}
			}
		}()
	case changed != nil && !changed[vs.Service] && p.unchanged(key, vs):
		return nil
	}
	before, err := h.RealServers(vs.VirtualServer)
	if err != nil {
		return err
	}
	drain := p.drainingOf(key)
	if err := p.syncRealServers(h, vs, before, stats); err != nil {
		*stats = counted
		if uerr := restoreRealServers(h, vs.VirtualServer, before); uerr != nil {
			return fmt.Errorf("%w; putting its real servers back: %w", err, uerr)
		}
		p.setDraining(key, drain)
		return err
	}
	return nil
}

// restoreRealServers makes the virtual server's real servers before's
// again, with their weights.
func restoreRealServers(h *kernel.IPVS, vs kernel.VirtualServer, before []kernel.RealServer) error {
	now, err := h.RealServers(vs)
	if err != nil {
		return err
	}
	had := map[netip.AddrPort]kernel.RealServer{}
	for _, rs := range before {
		had[rs.Address] = rs
	}
	for _, rs := range now {
		old, ok := had[rs.Address]
		delete(had, rs.Address)
		switch {
		case !ok:
			err = h.DeleteRealServer(vs, rs)
		case old.Weight != rs.Weight:
			rs.Weight = old.Weight
			err = h.UpdateRealServer(vs, rs)
		}
		if err != nil {
			return err
		}
	}
	for _, rs := range before {
		if _, missing := had[rs.Address]; missing {
			if err := h.AddRealServer(vs, rs); err != nil {
				return err
			}
		}
	}
	return nil
}

// drainingOf copies the draining state of one virtual server's real
// servers; setDraining puts such a copy back.
func (p *Proxier) drainingOf(vs string) map[drainKey]drainState {
	out := map[drainKey]drainState{}
	for k, st := range p.draining {
		if k.vs == vs {
			out[k] = st
		}
	}
	return out
}

func (p *Proxier) setDraining(vs string, st map[drainKey]drainState) {
	for k := range p.draining {
		if k.vs == vs {
			delete(p.draining, k)
		}
	}
	if len(st) > 0 && p.draining == nil {
		p.draining = map[drainKey]drainState{}
	}
	for k, v := range st {
		p.draining[k] = v
	}
}

// unchanged says the last Sync left this virtual server as planned and
// none of its real servers is draining.
func (p *Proxier) unchanged(key string, vs VirtualServer) bool {
	a, ok := p.applied[key]
	if !ok || !sameVS(a.vs, vs.VirtualServer) || !slices.Equal(a.rs, vs.RealServers) {
		return false
	}
	for k := range p.draining {
		if k.vs == key {
			return false
		}
	}
	return true
}

// syncRealServers makes a virtual server's real servers (cur, as read)
// the planned ones: missing ones are added, weights corrected (a draining endpoint that
// came back gets weight 1 again), others drained.
func (p *Proxier) syncRealServers(h *kernel.IPVS, vs VirtualServer, cur []kernel.RealServer, stats *SyncStats) error {
	want := map[netip.AddrPort]int{}
	for _, rs := range vs.RealServers {
		want[rs.Address] = rs.Weight
	}
	now := time.Now()
	for _, rs := range cur {
		w, ok := want[rs.Address]
		if !ok {
			if err := p.drain(h, vs.VirtualServer, rs, now, stats); err != nil {
				return err
			}
			continue
		}
		delete(want, rs.Address)
		delete(p.draining, drainKey{vs.Key(), rs.Address})
		if rs.Weight != w {
			rs.Weight = w
			if err := h.UpdateRealServer(vs.VirtualServer, rs); err != nil {
				return err
			}
			stats.RealServersUpdated++
		}
	}
	for _, rs := range vs.RealServers {
		if _, missing := want[rs.Address]; !missing {
			continue
		}
		if err := h.AddRealServer(vs.VirtualServer, rs); err != nil {
			return err
		}
		stats.RealServersAdded++
	}
	return nil
}

// drain handles a real server the plan no longer has. A TCP (or
// firewall-mark) one with connections gets weight 0: IPVS sends it no new
// connection but keeps the ones it has. It is deleted when they are gone
// or after DrainTimeout. UDP and SCTP ones are deleted at once, as
// kube-proxy does: there is no end of connection to wait for, and
// expire_nodest_conn moves their flows on at the next packet.
func (p *Proxier) drain(h *kernel.IPVS, vs kernel.VirtualServer, rs kernel.RealServer, now time.Time, stats *SyncStats) error {
	key := drainKey{vs.String(), rs.Address}
	if p.draining == nil {
		p.draining = map[drainKey]drainState{}
	}
	st, ok := p.draining[key]
	if !ok {
		st = drainState{since: now, vs: vs}
	}
	graceful := vs.FWMark != 0 || vs.Protocol == string(model.ProtocolTCP)
	if !graceful || rs.ActiveConns+rs.InactiveConns == 0 || now.Sub(st.since) >= p.drainTimeout() {
		if err := h.DeleteRealServer(vs, rs); err != nil {
			return err
		}
		delete(p.draining, key)
		stats.RealServersDeleted++
		return nil
	}
	p.draining[key] = st
	if rs.Weight != 0 {
		rs.Weight = 0
		if err := h.UpdateRealServer(vs, rs); err != nil {
			return err
		}
		stats.RealServersUpdated++
	}
	return nil
}

func (p *Proxier) forgetVS(key string) {
	delete(p.applied, key)
	for k := range p.draining {
		if k.vs == key {
			delete(p.draining, k)
		}
	}
}

// reapInterval is how often draining real servers are checked.
func (p *Proxier) reapInterval() time.Duration {
	return min(time.Second, max(p.drainTimeout()/4, 100*time.Millisecond))
}

// scheduleReaper arms the timer that deletes drained real servers
// between Syncs, or stops it when nothing drains. Called with p.mu held.
func (p *Proxier) scheduleReaper() {
	if len(p.draining) == 0 {
		p.stopReaper()
		return
	}
	if p.reaper == nil {
		p.reaper = time.AfterFunc(p.reapInterval(), p.reap)
		return
	}
	p.reaper.Reset(p.reapInterval())
}

func (p *Proxier) stopReaper() {
	if p.reaper != nil {
		p.reaper.Stop()
		p.reaper = nil
	}
}

// reap deletes the draining real servers whose connections ended or whose
// time is up. Its errors surface from the next Sync.
func (p *Proxier) reap() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.reaper == nil {
		return // stopped meanwhile
	}
	if err := p.reapOnce(time.Now()); err != nil {
		p.reapErr = fmt.Errorf("ipvs: drain real servers: %w", err)
	}
	p.reaper = nil
	p.scheduleReaper()
}

func (p *Proxier) reapOnce(now time.Time) error {
	h, err := p.opts.NetNS.OpenIPVS()
	if err != nil {
		return err
	}
	defer h.Close()
	byVS := map[string][]drainKey{}
	for k := range p.draining {
		byVS[k.vs] = append(byVS[k.vs], k)
	}
	var stats SyncStats
	for vsKey, keys := range byVS {
		vs := p.draining[keys[0]].vs
		cur, err := h.RealServers(vs)
		if err != nil {
			// The virtual server went away: nothing left to drain.
			for _, k := range keys {
				delete(p.draining, k)
			}
			continue
		}
		for _, k := range keys {
			i := slices.IndexFunc(cur, func(rs kernel.RealServer) bool { return rs.Address == k.rs })
			if i < 0 || cur[i].Weight > 0 {
				delete(p.draining, k) // gone, or back in service
				continue
			}
			if err := p.drain(h, vs, cur[i], now, &stats); err != nil {
				return fmt.Errorf("%s: %w", vsKey, err)
			}
		}
	}
	return nil
}
