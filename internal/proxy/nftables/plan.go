package nftables

import (
	"slices"

	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy"
)

// A port's rendering depends only on the port and the globals, so a Sync
// told that anything may have changed (Changed nil) compares each port
// with the copy kept from the last Sync and renders only those that
// differ: a periodic full resync of an unchanged state costs a comparison,
// not a render and a diff of the whole table.

// changedPorts names the ports of d that differ from what rs was
// rendered from, and those rs has that d lacks.
func (rs *Ruleset) changedPorts(d *proxy.Desired) map[model.ServicePortName]bool {
	changed := map[model.ServicePortName]bool{}
	seen := make(map[model.ServicePortName]bool, len(d.Services))
	for _, p := range d.Services {
		if seen[p.Name] {
			continue
		}
		seen[p.Name] = true
		if f := rs.ports[p.Name]; f == nil || !portEqual(f.in, p) {
			changed[p.Name] = true
		}
	}
	for name := range rs.ports {
		if !seen[name] {
			changed[name] = true
		}
	}
	return changed
}

// portEqual compares every field of two ports.
func portEqual(a, b *proxy.Port) bool {
	if a == nil || b == nil {
		return a == b
	}
	x, y := a.ServicePort, b.ServicePort
	return x.Name == y.Name && slices.Equal(x.ClusterIPs, y.ClusterIPs) && x.Port == y.Port && x.NodePort == y.NodePort &&
		slices.Equal(x.ExternalIPs, y.ExternalIPs) && slices.Equal(x.LoadBalancerIPs, y.LoadBalancerIPs) &&
		slices.Equal(x.LoadBalancerSourceRanges, y.LoadBalancerSourceRanges) && x.AffinityTimeout == y.AffinityTimeout &&
		x.ExternalPolicyLocal == y.ExternalPolicyLocal && x.InternalPolicyLocal == y.InternalPolicyLocal &&
		x.HealthCheckNodePort == y.HealthCheckNodePort && x.PreferClose == y.PreferClose && x.IPVSScheduler == y.IPVSScheduler &&
		slices.EqualFunc(x.Endpoints, y.Endpoints, endpointEqual) &&
		slices.EqualFunc(a.Cluster, b.Cluster, endpointEqual) && slices.EqualFunc(a.Local, b.Local, endpointEqual) &&
		a.HasEndpoints == b.HasEndpoints
}

func endpointEqual(a, b model.Endpoint) bool {
	return a.IP == b.IP && a.Port == b.Port && a.NodeName == b.NodeName && a.Zone == b.Zone && a.Ready == b.Ready &&
		a.Serving == b.Serving && a.Terminating == b.Terminating && slices.Equal(a.ZoneHints, b.ZoneHints) &&
		slices.Equal(a.NodeHints, b.NodeHints) && a.Pod == b.Pod
}

// clonePort copies a port deeply, so that a caller reusing its Desired
// cannot change what the last Sync was rendered from.
func clonePort(p *proxy.Port) *proxy.Port {
	c := *p
	c.ClusterIPs = slices.Clone(p.ClusterIPs)
	c.ExternalIPs = slices.Clone(p.ExternalIPs)
	c.LoadBalancerIPs = slices.Clone(p.LoadBalancerIPs)
	c.LoadBalancerSourceRanges = slices.Clone(p.LoadBalancerSourceRanges)
	c.Endpoints = cloneEndpoints(p.Endpoints)
	c.Cluster = cloneEndpoints(p.Cluster)
	c.Local = cloneEndpoints(p.Local)
	return &c
}

func cloneEndpoints(eps []model.Endpoint) []model.Endpoint {
	if eps == nil {
		return nil
	}
	out := slices.Clone(eps)
	for i := range out {
		out[i].ZoneHints = slices.Clone(out[i].ZoneHints)
		out[i].NodeHints = slices.Clone(out[i].NodeHints)
	}
	return out
}

// plan computes the transaction from what is programmed to d, and the
// ruleset the kernel holds once it is applied. It may update p.cur in
// place (which Sync forgets if the transaction fails).
func (p *Proxier) plan(d *proxy.Desired) (*Transaction, *Ruleset) {
	if p.cur == nil {
		rs := Render(d)
		if k := p.adopted; k != nil {
			p.adopted = nil
			if t, ok := diff(k, rs, nil); ok {
				return t, rs
			}
		}
		return &Transaction{Replace: rs}, rs
	}
	if !globalsOf(d).equal(p.cur.glob) {
		rs := Render(d)
		if t, ok := diff(p.cur, rs, nil); ok {
			return t, rs
		}
		return &Transaction{Replace: rs}, rs
	}
	changed := d.Changed
	if changed == nil {
		changed = p.cur.changedPorts(d)
	}
	rs, rec := p.cur, newRecorder()
	names := keysOf(changed)
	slices.SortFunc(names, model.ServicePortName.Compare)
	for _, name := range names {
		rs.removePort(name, rec)
		if sp := findPort(d, name); sp != nil {
			rs.addPort(sp, rec)
		}
	}
	if t, ok := diff(recorded{r: rec, cur: rs}, rs, rec); ok {
		return t, rs
	}
	rs = Render(d)
	return &Transaction{Replace: rs}, rs
}

// findPort finds a port in d.Services, which are sorted by name.
func findPort(d *proxy.Desired, name model.ServicePortName) *proxy.Port {
	i, ok := slices.BinarySearchFunc(d.Services, name, func(p *proxy.Port, n model.ServicePortName) int { return p.Name.Compare(n) })
	if !ok {
		return nil
	}
	return d.Services[i]
}
