package podnet

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"strings"
	"sync"

	"github.com/kdive/kdive/internal/kernel"
)

// ErrForeignRoute is wrapped by Sync's error when a route podnet wants has
// the same destination and metric as a route it does not own (another
// protocol): that route is left alone and the peer is not routed.
var ErrForeignRoute = errors.New("a route of another owner is in the way")

// Reconciler keeps a node's pod-network routes and tunnels as Sync was last
// told. It is safe for concurrent use; calls are serialised.
type Reconciler struct {
	opts Options
	mu   sync.Mutex
	// lastNAT is the natOutgoing table last applied.
	lastNAT string
}

// New returns a Reconciler; it does no work until Sync or Cleanup.
func New(opts Options) *Reconciler { return &Reconciler{opts: opts} }

// Plan completes st from the kernel (uplink subnet and MTU, underlay
// gateways) and renders it, changing nothing.
func (r *Reconciler) Plan(ctx context.Context, st State) (*Plan, error) {
	if r.opts.NetNS == nil {
		return nil, errors.New("podnet: no network namespace given")
	}
	st, err := r.observe(st)
	if err != nil {
		return nil, fmt.Errorf("read node %s's uplink %s: %w", st.Local.Name, r.opts.Uplink, err)
	}
	return Render(r.opts, st)
}

// Sync renders st and applies the difference to the node: it creates and
// fixes what is missing or wrong, and removes podnet's routes, tunnels and
// FDB/neighbour entries the plan no longer has. It applies every entry it
// can and returns the errors of the others joined.
func (r *Reconciler) Sync(ctx context.Context, st State) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	p, err := r.Plan(ctx, st)
	if err != nil {
		return err // it names the node
	}
	a := &applier{ctx: ctx, ns: r.opts.NetNS, p: p, report: r.opts.OnChange, lastNAT: &r.lastNAT}
	steps := []func() error{a.links, a.sysctls, a.fdb, a.neighbors, a.routes, a.staleLinks, a.natOutgoing}
	for _, step := range steps {
		if err := ctx.Err(); err != nil {
			return errors.Join(append(a.errs, fmt.Errorf("sync %s: %w", p.Node, err))...)
		}
		if err := step(); err != nil {
			// Reading the kernel failed: later steps would act blind.
			return errors.Join(append(a.errs, err)...)
		}
	}
	return errors.Join(a.errs...)
}

// observe fills what State may leave to the kernel.
func (r *Reconciler) observe(st State) (State, error) {
	if !st.Subnet.IsValid() || st.UplinkMTU == 0 {
		up, err := r.opts.NetNS.LinkByName(r.opts.Uplink)
		if err != nil {
			return st, err
		}
		if st.UplinkMTU == 0 {
			st.UplinkMTU = up.MTU
		}
		for _, a := range up.Addrs {
			if !st.Subnet.IsValid() && a.Addr() == st.Local.IP() {
				st.Subnet = a.Masked()
			}
		}
		if !st.Subnet.IsValid() {
			return st, fmt.Errorf("no address %v (the node's IP) on it", st.Local.IP())
		}
	}
	st.Gateways = maps.Clone(st.Gateways)
	for _, peer := range st.Peers {
		if !peer.IP().Is4() || st.Subnet.Contains(peer.IP()) || r.opts.Network.Encapsulate(st.Subnet, peer.IP()) {
			continue
		}
		if _, ok := st.Gateways[peer.IP()]; ok {
			continue
		}
		rt, err := r.opts.NetNS.RouteGet(peer.IP())
		if err != nil {
			continue // Render skips the peer, saying why
		}
		if st.Gateways == nil {
			st.Gateways = map[netip.Addr]netip.Addr{}
		}
		st.Gateways[peer.IP()] = peer.IP()
		if rt.Gateway.IsValid() {
			st.Gateways[peer.IP()] = rt.Gateway
		}
	}
	return st, nil
}

// applier applies one plan, collecting per-entry errors.
type applier struct {
	ctx     context.Context
	lastNAT *string
	ns      *kernel.NetNS
	p       *Plan
	report  func(Change)
	errs    []error
}

func (a *applier) changed(action, object, node string) {
	if a.report != nil {
		a.report(Change{Action: action, Object: object, Node: node})
	}
}

func (a *applier) fail(node, what string, err error) {
	a.errs = append(a.errs, fmt.Errorf("sync %s %s: %w", node, what, err))
}

func (a *applier) links() error {
	for _, l := range a.p.Links {
		changed, err := a.ns.EnsureTunnel(l.Tunnel)
		if changed {
			a.changed("update", "link "+l.Tunnel.String(), l.Node)
		}
		if err != nil {
			a.fail(l.Node, "tunnel "+l.Tunnel.Name, err)
		}
	}
	return nil
}

func (a *applier) sysctls() error {
	for _, s := range a.p.Sysctls {
		if v, err := a.ns.ReadSysctl(s.Name); err == nil && v == s.Value {
			continue
		} else if err != nil && strings.HasPrefix(s.Name, "net.bridge.") {
			// net.bridge.* appears with br_netfilter.
			if err := kernel.LoadModule(context.Background(), "br_netfilter"); err != nil {
				a.fail(s.Node, "sysctl "+s.Name, err)
				continue
			}
		}
		if err := a.ns.Sysctl(s.Name, s.Value); err != nil {
			a.fail(s.Node, "sysctl "+s.Name, err)
			continue
		}
		a.changed("set", "sysctl "+s.Name+"="+s.Value, s.Node)
	}
	return nil
}

// vxlanDevice is the plan's VXLAN device, if any.
func (a *applier) vxlanDevice() string {
	for _, l := range a.p.Links {
		if l.Tunnel.Kind == kernel.TunnelVXLAN {
			return l.Tunnel.Name
		}
	}
	return ""
}

func (a *applier) fdb() error {
	dev := a.vxlanDevice()
	if dev == "" {
		return nil // a VXLAN device no longer wanted goes with its entries
	}
	have, err := a.ns.FDB(dev)
	if err != nil {
		a.fail(a.p.Node, "fdb of "+dev, err)
		return nil
	}
	key := func(e kernel.FDBEntry) string { return e.MAC.String() + " " + e.Dst.String() }
	want := map[string]bool{}
	haveKeys := map[string]bool{}
	for _, e := range have {
		haveKeys[key(e)] = true
	}
	for _, f := range a.p.FDB {
		want[key(f.Entry)] = true
		if haveKeys[key(f.Entry)] {
			continue
		}
		if err := a.ns.ReplaceFDB(f.Entry); err != nil {
			a.fail(f.Node, "fdb entry "+f.Entry.MAC.String(), err)
			continue
		}
		a.changed("replace", "fdb "+f.Entry.String(), f.Node)
	}
	for _, e := range have {
		if want[key(e)] {
			continue
		}
		if err := a.ns.DeleteFDB(e); err != nil {
			a.fail(a.p.Node, "stale fdb entry "+e.MAC.String(), err)
			continue
		}
		a.changed("delete", "fdb "+e.String(), "")
	}
	return nil
}

func (a *applier) neighbors() error {
	dev := a.vxlanDevice()
	if dev == "" {
		return nil
	}
	have, err := a.ns.Neighbors(dev)
	if err != nil {
		a.fail(a.p.Node, "neighbours of "+dev, err)
		return nil
	}
	cur := map[netip.Addr]kernel.Neighbor{}
	for _, n := range have {
		cur[n.IP] = n
	}
	want := map[netip.Addr]bool{}
	for _, n := range a.p.Neighbors {
		e := n.Neighbor
		want[e.IP] = true
		if c, ok := cur[e.IP]; ok && c.Permanent && c.MAC.String() == e.MAC.String() {
			continue
		}
		if err := a.ns.ReplaceNeighbor(e); err != nil {
			a.fail(n.Node, "neighbour "+e.IP.String(), err)
			continue
		}
		a.changed("replace", "neigh "+e.String(), n.Node)
	}
	for _, c := range have {
		if want[c.IP] || !c.Permanent {
			continue // the kernel's own entries come and go
		}
		if err := a.ns.DeleteNeighbor(c); err != nil {
			a.fail(a.p.Node, "stale neighbour "+c.IP.String(), err)
			continue
		}
		a.changed("delete", "neigh "+c.String(), "")
	}
	return nil
}

// routeKey identifies a route in the main table as the kernel does for
// replace: destination and metric (kdive sets no TOS).
type routeKey struct {
	dst    netip.Prefix
	metric int
}

func (a *applier) routes() error {
	have, err := a.ns.Routes()
	if err != nil {
		return fmt.Errorf("sync %s: %w", a.p.Node, err)
	}
	cur := map[routeKey]kernel.Route{}
	for _, r := range have {
		cur[routeKey{r.Dst, r.Metric}] = r
	}
	want := map[routeKey]bool{}
	for _, e := range a.p.Routes {
		k := routeKey{e.Route.Dst, e.Route.Metric}
		want[k] = true
		what := routeWhat(e)
		c, ok := cur[k]
		switch {
		case ok && c.Protocol != kernel.RouteProtocolAgent:
			a.fail(e.Node, what, fmt.Errorf("%w: %s", ErrForeignRoute, c))
			continue
		case ok && c.Equal(e.Route):
			continue
		}
		if err := a.ns.ReplaceRoute(e.Route); err != nil {
			a.fail(e.Node, what, err)
			continue
		}
		a.changed("replace", "route "+e.Route.String(), e.Node)
	}
	for _, r := range have {
		if r.Protocol != kernel.RouteProtocolAgent || want[routeKey{r.Dst, r.Metric}] {
			continue
		}
		if err := a.ns.DeleteRoute(r); err != nil {
			a.fail(a.p.Node, "stale route "+r.Dst.String(), err)
			continue
		}
		a.changed("delete", "route "+r.String(), "")
	}
	return nil
}

func routeWhat(e RouteEntry) string {
	if e.Route.Blackhole {
		return "blackhole route " + e.Route.Dst.String()
	}
	return "peer route " + e.Route.Dst.String()
}

// staleLinks removes podnet's tunnels the plan no longer has.
func (a *applier) staleLinks() error {
	want := map[string]bool{}
	for _, l := range a.p.Links {
		want[l.Tunnel.Name] = true
	}
	errs := removeTunnels(a.ns, func(name string) bool { return !want[name] }, a.report)
	for _, err := range errs {
		a.fail(a.p.Node, "stale tunnel", err)
	}
	return nil
}
