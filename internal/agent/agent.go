package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"time"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/kdive/kdive/internal/cni"
	"github.com/kdive/kdive/internal/cni/ipam"
	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/podnet"
	"github.com/kdive/kdive/internal/source"
)

// Options configure an Agent.
type Options struct {
	Config *Configuration
	Logger *slog.Logger
	// Client overrides the connection of Config (tests inject one).
	Client kubernetes.Interface
	// NetNS is the node's network namespace; default the agent's own.
	NetNS *kernel.NetNS
}

// Agent is the node daemon. Create it with New and start it with Run.
type Agent struct {
	opts    Options
	cfg     *Configuration
	log     *slog.Logger
	trigger chan struct{}

	health  *health
	metrics *metrics

	nodes  corelisters.NodeLister
	pods   *localPods
	proxy  *proxyRunner
	podnet *podnet.Reconciler
	// podnetDesired is the state podnet last synced; a change applied
	// while syncing the same state again repairs drift.
	podnetDesired podnet.State
	repairing     bool
	orphansLogged int
	uplink        string
	confList      []byte
}

// New returns an agent; it does no work until Run.
func New(opts Options) *Agent {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Agent{
		opts: opts, cfg: opts.Config, log: log, trigger: make(chan struct{}, 1),
		health: &health{period: opts.Config.SyncPeriod.Duration}, metrics: newMetrics(),
	}
}

// ErrNotReady is wrapped by sync errors that mean "wait for the cluster",
// not "something is broken": this node's object or its pod CIDR is missing.
var ErrNotReady = errors.New("node not ready")

// Run connects to the source, waits for the caches, and syncs until ctx
// ends.
func (a *Agent) Run(ctx context.Context) error {
	cfg := a.cfg
	if a.opts.NetNS == nil {
		ns, err := kernel.OpenNetNS("/proc/self/ns/net")
		if err != nil {
			return err
		}
		defer ns.Close()
		a.opts.NetNS = ns
	}
	client := a.opts.Client
	if client == nil {
		var err error
		client, err = source.NewClient(ctx, source.Connection{
			Kubeconfig: cfg.ClientConnection.Kubeconfig, LabStore: cfg.ClientConnection.LabStore,
			APIServer: cfg.ClientConnection.APIServer,
		}, func(err error) { a.log.Warn("source", "err", err) })
		if err != nil {
			return err
		}
	}
	factory := informers.NewSharedInformerFactory(client, 0)
	nodeInf := factory.Core().V1().Nodes()
	a.nodes = nodeInf.Lister()
	if _, err := nodeInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { a.Trigger() },
		UpdateFunc: func(any, any) { a.Trigger() },
		DeleteFunc: func(any) { a.Trigger() },
	}); err != nil {
		return fmt.Errorf("watch nodes: %w", err)
	}
	if err := a.setupProxy(factory); err != nil {
		return err
	}
	var podFactory informers.SharedInformerFactory
	if a.podNetwork() {
		var err error
		if podFactory, err = a.setupPods(client); err != nil {
			return err
		}
	}
	if switchedModes(cfg.CNI.DataDir, cfg.Proxy.Mode) {
		if err := cleanupOtherModes(ctx, cfg.Proxy.Mode, a.opts.NetNS); err != nil {
			a.log.Error("cleaning up other proxy modes", "err", err)
		}
	}
	defer a.closeProxy()
	stopServing, err := a.serve(ctx)
	if err != nil {
		return err
	}
	defer stopServing()
	// Shutdown waits for the informers, which stop when stop closes.
	stop := make(chan struct{})
	defer func() {
		close(stop)
		factory.Shutdown()
		if podFactory != nil {
			podFactory.Shutdown()
		}
	}()
	factory.Start(stop)
	// The pod network and the proxy need nodes, services and slices; the
	// pods only feed a report, which waits for them by itself.
	if podFactory != nil {
		podFactory.Start(stop)
	}
	for typ, ok := range factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("caches of %v did not sync: %w", typ, ctx.Err())
		}
	}
	a.log.Info("caches synced; syncing", "podNetwork", cfg.PodNetwork)
	return a.loop(ctx)
}

// Trigger asks for a sync soon; triggers coalesce.
func (a *Agent) Trigger() {
	a.health.changed()
	select {
	case a.trigger <- struct{}{}:
	default:
	}
}

func (a *Agent) loop(ctx context.Context) error {
	resync := time.NewTicker(a.cfg.SyncPeriod.Duration)
	defer resync.Stop()
	backoff := time.Duration(0)
	var retry <-chan time.Time
	a.Trigger()
	for {
		full := false
		select {
		case <-ctx.Done():
			return nil
		case <-a.trigger:
		case <-resync.C:
			full = true
		case <-retry:
			full, retry = true, nil
		}
		if retry != nil {
			// Backing off after a failure: the pending retry, a full sync,
			// takes this change (or resync) along.
			continue
		}
		start := time.Now()
		err := a.syncOnce(ctx, full)
		if !errors.Is(err, ErrNotReady) {
			a.health.synced(err)
		}
		switch {
		case err == nil:
			backoff, retry = 0, nil
			a.log.Debug("synced", "took", time.Since(start))
		case errors.Is(err, ErrNotReady):
			a.log.Info("waiting", "reason", err)
			retry = nil // the node's update triggers the next sync
		default:
			// Doubling from 200 ms, up to a sync period (30 s at most).
			backoff = min(max(2*backoff, 200*time.Millisecond), 30*time.Second, a.cfg.SyncPeriod.Duration)
			retry = time.After(backoff)
			a.log.Error("sync failed; retrying", "err", err, "in", backoff)
		}
		// Bound the frequency: changes arriving meanwhile coalesce.
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(a.cfg.MinSyncPeriod.Duration - time.Since(start)):
		}
	}
}

// podNetwork says whether the agent runs the pod network; without it
// (podNetwork.interface none) it is the service proxy only.
func (a *Agent) podNetwork() bool { return a.cfg.PodNetwork.Interface != model.InterfaceNone }

// syncOnce computes this node's desired state from the informers' caches
// and applies it: the pod network, then the service proxy (full: every
// service, not only the ones that changed). A failure of one does not keep
// the other from being applied, and neither does a pod network that is
// not ready yet.
func (a *Agent) syncOnce(ctx context.Context, full bool) error {
	st, err := a.desiredState()
	if err != nil {
		// A node whose pod network cannot run yet (no spec.podCIDR) still
		// gets its Services, as kube-proxy's would: the proxy needs only
		// the node's name, zone and address. The pod network waits.
		if errors.Is(err, ErrNotReady) && st.Local.IP().IsValid() {
			if perr := a.syncProxy(ctx, st.Local, full); perr != nil {
				return perr
			}
		}
		return err
	}
	if !a.podNetwork() {
		return a.syncProxy(ctx, st.Local, full)
	}
	return errors.Join(a.syncPodNet(ctx, st), a.syncProxy(ctx, st.Local, full))
}

// syncPodNet writes the CNI network config, then routes and tunnels.
func (a *Agent) syncPodNet(ctx context.Context, st podnet.State) error {
	up, err := a.findUplink(st.Local.IP())
	if err != nil {
		return err
	}
	st.Subnet = up.subnet
	if err := a.writeConfList(st.Local, up); err != nil {
		return err
	}
	if a.podnet == nil || a.uplink != up.name {
		a.podnet = podnet.New(podnet.Options{NetNS: a.opts.NetNS, Network: a.cfg.PodNetwork, NATOutgoing: a.cfg.NATOutgoing, Uplink: up.name, OnChange: a.podnetChanged})
		a.uplink = up.name
	}
	a.reportIPAM(st.Local)
	a.repairing = reflect.DeepEqual(st, a.podnetDesired)
	if err := a.podnet.Sync(ctx, st); err != nil {
		a.metrics.syncErrors.WithLabelValues("podnet").Inc()
		return fmt.Errorf("sync pod network of node %s: %w", st.Local.Name, err)
	}
	a.podnetDesired = st
	return nil
}

// desiredState reads this node and its peers from the node cache. When
// this node cannot carry the pod network yet, the error wraps ErrNotReady
// and the state holds what the proxy can use of the node.
//
// Without a pod network only this node matters, and only its name, zone
// and InternalIP: a CNI that keeps its own IPAM never sets spec.podCIDR,
// so the proxy must not wait for one (it uses the block if there is one).
func (a *Agent) desiredState() (podnet.State, error) {
	var st podnet.State
	if !a.podNetwork() {
		n, err := a.nodes.Get(a.cfg.NodeName)
		if err != nil {
			return st, fmt.Errorf("node %s: no Node object of that name: %w", a.cfg.NodeName, ErrNotReady)
		}
		mn, problem := source.Node(n)
		if !mn.IP().IsValid() {
			return st, fmt.Errorf("node %s: %s: %w", n.Name, problem, ErrNotReady)
		}
		st.Local = mn
		return st, nil
	}
	all, err := a.nodes.List(labels.Everything())
	if err != nil {
		return st, err
	}
	found := false
	for _, n := range all {
		mn, problem := source.Node(n)
		if n.Name == a.cfg.NodeName {
			if problem != "" {
				st.Local = mn // what the proxy can use of it
				return st, fmt.Errorf("node %s: %s: %w", n.Name, problem, ErrNotReady)
			}
			st.Local, found = mn, true
			continue
		}
		if problem != "" {
			a.log.Info("skipping peer", "node", n.Name, "reason", problem)
			continue
		}
		st.Peers = append(st.Peers, mn)
	}
	if !found {
		return st, fmt.Errorf("node %s: no Node object of that name: %w", a.cfg.NodeName, ErrNotReady)
	}
	// The lister's order is random; a stable one makes equal states equal.
	sort.Slice(st.Peers, func(i, j int) bool { return st.Peers[i].Name < st.Peers[j].Name })
	return st, nil
}

type uplink struct {
	name   string
	subnet netip.Prefix
	mtu    int
}

// findUplink finds the interface holding the node's IP (or the configured
// one) and its subnet.
func (a *Agent) findUplink(ip netip.Addr) (uplink, error) {
	links, err := a.opts.NetNS.Links()
	if err != nil {
		return uplink{}, err
	}
	for _, l := range links {
		if a.cfg.Uplink != "" && l.Name != a.cfg.Uplink {
			continue
		}
		for _, p := range l.Addrs {
			if p.Addr() == ip {
				return uplink{name: l.Name, subnet: p.Masked(), mtu: l.MTU}, nil
			}
		}
	}
	if a.cfg.Uplink != "" {
		return uplink{}, fmt.Errorf("uplink %s does not hold the node's InternalIP %s", a.cfg.Uplink, ip)
	}
	return uplink{}, fmt.Errorf("no interface holds the node's InternalIP %s", ip)
}

// writeConfList writes the node's CNI network config when it changed.
func (a *Agent) writeConfList(local model.Node, up uplink) error {
	mtu := a.cfg.MTU
	if mtu == 0 {
		mtu = a.cfg.PodNetwork.PodMTU(up.mtu)
	}
	b, err := cni.NewConfList(cni.ConfListOptions{
		Mode:    a.cfg.PodNetwork.Interface,
		PodCIDR: local.PodCIDR,
		MTU:     mtu,
		DataDir: a.cfg.CNI.DataDir,
	})
	if err != nil {
		return err
	}
	if bytes.Equal(b, a.confList) {
		if _, err := os.Stat(filepath.Join(a.cfg.CNI.ConfDir, cni.ConfListFile)); err == nil {
			return nil
		}
	}
	if err := cni.WriteConfList(a.cfg.CNI.ConfDir, b); err != nil {
		return err
	}
	a.confList = b
	a.log.Info("wrote CNI network config", "dir", a.cfg.CNI.ConfDir, "podCIDR", local.PodCIDR, "mtu", mtu)
	return nil
}

// podnetChanged counts changes podnet makes while the desired state is the
// one already programmed: someone else changed or removed our routes,
// tunnels or entries, and the sync repaired them.
func (a *Agent) podnetChanged(c podnet.Change) {
	a.log.Debug("pod network change", "change", fmt.Sprint(c))
	if a.repairing {
		a.metrics.driftRepairs.WithLabelValues("podnet").Inc()
		a.log.Info("repaired pod network drift", "change", fmt.Sprint(c))
	}
}

// reportIPAM publishes how full this node's block is.
func (a *Agent) reportIPAM(local model.Node) {
	store, err := ipam.New(a.cfg.CNI.DataDir, local.PodCIDR)
	if err != nil {
		return
	}
	allocs, err := store.List()
	if err != nil {
		return
	}
	block := local.PodCIDR.String()
	a.metrics.ipamInUse.WithLabelValues(local.Name, block).Set(float64(len(allocs)))
	a.metrics.ipamSize.WithLabelValues(local.Name, block).Set(float64(ipam.Capacity(local.PodCIDR)))
	if a.pods == nil {
		return
	}
	orphans, err := a.pods.orphans(allocs, time.Now())
	if err != nil {
		return
	}
	a.metrics.ipamOrphaned.WithLabelValues(local.Name, block).Set(float64(len(orphans)))
	if len(orphans) != a.orphansLogged {
		a.orphansLogged = len(orphans)
		for _, o := range orphans {
			a.log.Warn("pod address allocated but held by no pod of this node", "addr", o.Addr, "attachment", o.Attachment.String(), "for", ">"+orphanGrace.String())
		}
	}
}
