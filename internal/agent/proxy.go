package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy"
)

// proxyRunner is the agent's service proxy: the tracker fed by the
// Service and EndpointSlice informers, the mode's backend, the health
// check ports, and what was programmed last (for stale conntrack entries).
type proxyRunner struct {
	a        *Agent
	backend  proxy.Backend
	tracker  *proxy.Tracker
	health   *proxy.HealthServer
	prev     *proxy.Desired
	needFull bool
	// triggers are the EndpointSlice change times not programmed yet, for
	// the network programming latency.
	triggersMu sync.Mutex
	triggers   []time.Time
	reported   map[string]bool // invalid-service errors already logged
}

// setupProxy registers the informers and handlers the proxy needs. It
// does nothing in mode none.
func (a *Agent) setupProxy(factory informers.SharedInformerFactory) error {
	if a.cfg.Proxy.Mode == ProxyModeNone {
		return nil
	}
	backend, err := newBackend(a.cfg.Proxy, a.opts.NetNS, a.proxyRepaired)
	if err != nil {
		return err
	}
	if a.cfg.Proxy.LocalhostNodePorts && !localhostNodePorts(a.cfg.Proxy) {
		a.log.Warn("proxy.localhostNodePorts is supported in iptables mode only; ignored in " + a.cfg.Proxy.Mode + " mode")
	}
	svcInf := factory.Core().V1().Services()
	sliceInf := factory.Discovery().V1().EndpointSlices()
	pr := &proxyRunner{
		a: a, backend: backend, tracker: proxy.NewTracker(svcInf.Lister(), sliceInf.Lister()),
		health: &proxy.HealthServer{Listen: listenIn(a.opts.NetNS)}, needFull: true, reported: map[string]bool{},
	}
	svcHandler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { pr.serviceEvent(o); a.mark(a.proxyPart) },
		UpdateFunc: func(_, o any) { pr.serviceEvent(o); a.mark(a.proxyPart) },
		DeleteFunc: func(o any) { pr.serviceEvent(o); a.mark(a.proxyPart) },
	}
	sliceHandler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { pr.sliceEvent(o); a.mark(a.proxyPart) },
		UpdateFunc: func(_, o any) { pr.sliceEvent(o); a.mark(a.proxyPart) },
		DeleteFunc: func(o any) { pr.sliceEvent(o); a.mark(a.proxyPart) },
	}
	if _, err := svcInf.Informer().AddEventHandler(svcHandler); err != nil {
		return fmt.Errorf("watch services: %w", err)
	}
	if _, err := sliceInf.Informer().AddEventHandler(sliceHandler); err != nil {
		return fmt.Errorf("watch endpoint slices: %w", err)
	}
	a.proxy = pr
	a.proxyPart = &part{reconciler: pr}
	a.parts = append(a.parts, a.proxyPart)
	return nil
}

func (pr *proxyRunner) name() string { return "proxy" }

// sync programs this node's Services (full: every service, not only the
// ones the tracker marked). It needs of the Node only its address, not
// the pod network.
func (pr *proxyRunner) sync(ctx context.Context, full bool) error {
	local, err := pr.a.localNode()
	if err != nil {
		return err
	}
	return pr.a.syncProxy(ctx, local, full)
}

// localhostNodePorts tells whether the proxy serves NodePorts on
// 127.0.0.1: only iptables mode does, as upstream, where route_localnet
// comes with KUBE-PROXY-FIREWALL's guard against CVE-2020-8558. Upstream's
// nftables mode does not support it and its ipvs mode ignores it; kdive's
// nftables table has no such guard, so there it would be a hole, and
// without route_localnet the rules would do nothing. The agent warns once
// and leaves 127.0.0.1 out, rather than refusing a configuration a
// fleet-wide mode switch may well carry.
func localhostNodePorts(c ProxyConfig) bool {
	return c.LocalhostNodePorts && c.Mode == "iptables"
}

// listenIn listens in ns: the health check ports belong to the node the
// agent manages, which is not the agent's own namespace in a test or lab.
func listenIn(ns *kernel.NetNS) func(network, addr string) (net.Listener, error) {
	return func(network, addr string) (net.Listener, error) {
		var ln net.Listener
		err := ns.Do(func() (err error) {
			ln, err = net.Listen(network, addr)
			return err
		})
		return ln, err
	}
}

func (pr *proxyRunner) serviceEvent(o any) {
	if t, ok := o.(cache.DeletedFinalStateUnknown); ok {
		o = t.Obj
	}
	if s, ok := o.(*corev1.Service); ok {
		pr.tracker.ServiceChanged(s.Namespace, s.Name)
	}
}

func (pr *proxyRunner) sliceEvent(o any) {
	if t, ok := o.(cache.DeletedFinalStateUnknown); ok {
		o = t.Obj
	}
	if s, ok := o.(*discoveryv1.EndpointSlice); ok {
		pr.tracker.SliceChanged(s)
		if t, err := time.Parse(time.RFC3339Nano, s.Annotations[corev1.EndpointsLastChangeTriggerTime]); err == nil {
			pr.triggersMu.Lock()
			pr.triggers = append(pr.triggers, t)
			pr.triggersMu.Unlock()
		}
	}
}

// programmed reports the latency of every change the last sync programmed.
func (pr *proxyRunner) programmed(m *metrics) {
	pr.triggersMu.Lock()
	ts := pr.triggers
	pr.triggers = nil
	pr.triggersMu.Unlock()
	now := time.Now()
	for _, t := range ts {
		m.programming.Observe(now.Sub(t).Seconds())
	}
}

// ProxyInputs are the proxy settings and node an agent with configuration
// cfg programs its node's Services with, local being its Node (as
// source.Node translates it). Validate has checked cfg's CIDRs.
func ProxyInputs(cfg ProxyConfig, local model.Node) (proxy.Config, model.Node) {
	pc := proxy.Config{LocalhostNodePorts: localhostNodePorts(cfg), MasqueradeAll: cfg.MasqueradeAll}
	if c, err := netip.ParsePrefix(cfg.ClusterCIDR); err == nil {
		pc.ClusterCIDRs = []netip.Prefix{c}
	} else if local.PodCIDR.IsValid() {
		pc.ClusterCIDRs = []netip.Prefix{local.PodCIDR}
	}
	for _, s := range cfg.NodePortAddresses {
		if p, err := netip.ParsePrefix(s); err == nil {
			pc.NodePortAddresses = append(pc.NodePortAddresses, p)
		}
	}
	// The proxy's node is the pod network's, without the pod block.
	return pc, model.Node{Name: local.Name, Zone: local.Zone, IPs: local.IPs}
}

// syncProxy computes this node's services and programs them: the backend
// first (atomically; on failure the old rules stay and the next sync is a
// full one), then the health check ports and stale UDP conntrack entries.
func (a *Agent) syncProxy(ctx context.Context, local model.Node, full bool) error {
	pr := a.proxy
	if pr == nil {
		return nil
	}
	cfg, node := ProxyInputs(a.cfg.Proxy, local)
	if full || pr.needFull {
		if err := pr.tracker.MarkAll(); err != nil {
			return err
		}
	}
	start := time.Now()
	d, invalid := pr.tracker.Desired(node, cfg, full || pr.needFull)
	a.reportInvalid(invalid)
	if err := pr.backend.Sync(ctx, d); err != nil {
		pr.needFull = true
		a.metrics.syncErrors.WithLabelValues("proxy").Inc()
		return fmt.Errorf("%s proxy: %w", pr.backend.Mode(), err)
	}
	pr.needFull = false
	took := time.Since(start).Seconds()
	a.metrics.syncDuration.Observe(took)
	if d.Full() {
		a.metrics.fullSyncDuration.Observe(took)
	} else {
		a.metrics.partialSyncDuration.Observe(took)
	}
	a.metrics.lastSync.SetToCurrentTime()
	pr.programmed(a.metrics)
	eps := 0
	for _, p := range d.Services {
		eps += len(p.Cluster) + len(p.Local)
	}
	a.metrics.servicesProgrammed.Set(float64(len(d.Services)))
	a.metrics.endpointsProgrammed.Set(float64(eps))
	a.metrics.invalidServices.Set(float64(len(invalid)))
	var errs []error
	// A health check port that cannot be bound (another process holds
	// it) is reported and retried at the next sync, as upstream does; it
	// is no reason to retry the datapath with backoff or to turn /healthz
	// unhealthy, since the Services themselves are programmed.
	if err := pr.health.Sync(d); err != nil {
		a.log.Warn("health check node ports", "err", err)
	}
	if stale := proxy.StaleConntrack(pr.prev, d); len(stale) > 0 {
		n, err := a.opts.NetNS.DeleteConntrack(stale...)
		if err != nil {
			errs = append(errs, err)
		}
		a.log.Info("deleted stale UDP conntrack entries", "entries", n)
	}
	if pr.prev == nil {
		// After the first sync, whose rules use conntrack: the timeouts
		// exist in the namespace only once nf_conntrack is loaded.
		a.setConntrack()
	}
	pr.prev = d
	a.log.Debug("proxy synced", "mode", pr.backend.Mode(), "services", len(d.Services), "full", d.Full(), "changed", len(d.Changed))
	return errors.Join(errs...)
}

// proxyRepaired counts what the backend's full sync found changed by
// someone else in its rules and put back.
func (a *Agent) proxyRepaired(objects []string) {
	a.metrics.driftRepairs.WithLabelValues("proxy").Add(float64(len(objects)))
	shown := objects[:min(len(objects), 5)]
	a.log.Info("repaired proxy drift", "mode", a.cfg.Proxy.Mode, "objects", len(objects), "first", strings.Join(shown, "; "))
}

// reportInvalid logs each invalid service once, while it stays invalid.
func (a *Agent) reportInvalid(errs []error) {
	now := map[string]bool{}
	for _, err := range errs {
		now[err.Error()] = true
	}
	var msgs []string
	for m := range now {
		if !a.proxy.reported[m] {
			msgs = append(msgs, m)
		}
	}
	sort.Strings(msgs)
	for _, m := range msgs {
		a.log.Warn("service not proxied", "err", m)
	}
	a.proxy.reported = now
}

// closeProxy stops the health check ports when the agent stops; the rules
// stay (a restarted agent adopts them).
func (a *Agent) closeProxy() {
	if a.proxy != nil {
		a.proxy.health.Close()
	}
}

// setConntrack sets the node's TCP connection-tracking timeouts, once, as
// kube-proxy does when it starts (its conntrack configuration): after the
// first sync, whose rules load nf_conntrack. A node
// where they cannot be set (no nf_conntrack yet, a read-only /proc/sys)
// keeps the kernel's and the agent says so.
func (a *Agent) setConntrack() {
	c := a.cfg.Proxy.Conntrack
	for _, s := range []struct {
		key string
		d   *metav1.Duration
	}{
		{"net/netfilter/nf_conntrack_tcp_timeout_established", c.TCPEstablishedTimeout},
		{"net/netfilter/nf_conntrack_tcp_timeout_close_wait", c.TCPCloseWaitTimeout},
	} {
		if s.d == nil || s.d.Duration == 0 {
			continue
		}
		secs := strconv.Itoa(int(s.d.Seconds()))
		if err := a.opts.NetNS.Sysctl(s.key, secs); err != nil {
			a.log.Warn("cannot set a conntrack timeout; the kernel's stays", "sysctl", s.key, "value", secs, "err", err)
		}
	}
}
