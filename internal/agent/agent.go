package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/model"
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

	nodes corelisters.NodeLister
	pods  *localPods
	proxy *proxyRunner
	// parts are the reconcilers the loop runs, in this order: the pod
	// network, then the proxy (proxyPart, which Service and EndpointSlice
	// events mark; nil in proxy mode none). A half the agent does not run
	// has no part.
	parts     []*part
	proxyPart *part
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
	if cfg.SysctlDir != "" {
		a.opts.NetNS.SetSysctlDir(cfg.SysctlDir)
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
	var podFactory informers.SharedInformerFactory
	if a.podNetwork() {
		var err error
		if podFactory, err = a.setupPods(client); err != nil {
			return err
		}
		a.parts = append(a.parts, &part{reconciler: &podnetRunner{a: a}})
	}
	// Services and EndpointSlices mark the proxy only.
	if err := a.setupProxy(factory); err != nil {
		return err
	}
	// Nodes mark both halves: the proxy needs this node's name, zone,
	// address (and pod CIDR, without proxy.clusterCIDR).
	if _, err := nodeInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { a.Trigger() },
		UpdateFunc: func(any, any) { a.Trigger() },
		DeleteFunc: func(any) { a.Trigger() },
	}); err != nil {
		return fmt.Errorf("watch nodes: %w", err)
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

// podNetwork says whether the agent runs the pod network; without it
// (podNetwork.interface none) it is the service proxy only.
func (a *Agent) podNetwork() bool { return a.cfg.PodNetwork.Interface != model.InterfaceNone }

// localNode is this node as the proxy needs it: its name, zone and
// InternalIP (and its pod CIDR if it has one). A node whose pod network
// cannot run yet (no spec.podCIDR) still gets its Services, as
// kube-proxy's would; and a CNI that keeps its own IPAM never sets one.
func (a *Agent) localNode() (model.Node, error) {
	n, err := a.nodes.Get(a.cfg.NodeName)
	if err != nil {
		return model.Node{}, fmt.Errorf("node %s: no Node object of that name: %w", a.cfg.NodeName, ErrNotReady)
	}
	mn, problem := source.Node(n)
	if !mn.IP().IsValid() {
		return mn, fmt.Errorf("node %s: %s: %w", n.Name, problem, ErrNotReady)
	}
	return mn, nil
}
