package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy"
	"github.com/kdive/kdive/internal/proxy/modes"
	"github.com/kdive/kdive/internal/proxy/nftables"
)

// ProxyModes are the modes `kdive bench datapath` knows, in report order:
// every one.
var ProxyModes = modes.Names()

// MaxServices bounds --services: the generated services' cluster IPs
// (10.96.0.1 upward) must stay clear of the measured one (10.111.255.1).
const MaxServices = 200_000

// DatapathOptions say what `kdive bench datapath` measures. Zero values
// take the defaults.
type DatapathOptions struct {
	Modes    []string // default ProxyModes
	Services []int    // service counts, default 100, 1000, 10000
	// Samples is how many new connections are timed per count (default
	// 300), within SampleTime (default 10 s).
	Samples    int
	SampleTime time.Duration
	// Duration of each throughput stream (default 2 s).
	Duration time.Duration
	// OnNamespace is called with the name of every namespace the run
	// creates; Progress with a line saying what is being measured.
	OnNamespace func(name string)
	Progress    func(string)
}

func (o *DatapathOptions) defaults() error {
	if len(o.Modes) == 0 {
		o.Modes = ProxyModes
	}
	for _, m := range o.Modes {
		if !slices.Contains(ProxyModes, m) {
			return fmt.Errorf("proxy mode %q: want one of %s", m, strings.Join(ProxyModes, ", "))
		}
	}
	if len(o.Services) == 0 {
		o.Services = []int{100, 1000, 10000}
	}
	for _, n := range o.Services {
		if n < 1 || n > MaxServices {
			return fmt.Errorf("service count %d: want 1 to %d", n, MaxServices)
		}
	}
	o.Samples = cmpOr(o.Samples, 300)
	o.SampleTime = cmpOr(o.SampleTime, 10*time.Second)
	o.Duration = cmpOr(o.Duration, 2*time.Second)
	return nil
}

func cmpOr[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// DatapathRun is one mode at one service count (-o json prints one per
// line). A mode the kernel cannot run has only Mode and Unavailable.
type DatapathRun struct {
	Mode     string `json:"mode"`
	Services int    `json:"services,omitempty"`
	// First-packet latency: a new connection and one 64-byte request and
	// response from the client pod to the ClusterIP.
	P50Seconds float64 `json:"p50Seconds,omitempty"`
	P90Seconds float64 `json:"p90Seconds,omitempty"`
	P99Seconds float64 `json:"p99Seconds,omitempty"`
	Samples    int     `json:"samples,omitempty"`
	// One TCP stream pod -> ClusterIP -> pod, and pod -> pod direct, and
	// the first over the second.
	ThroughputBitsPerSecond float64 `json:"throughputBitsPerSecond,omitempty"`
	DirectBitsPerSecond     float64 `json:"directBitsPerSecond,omitempty"`
	ThroughputRatio         float64 `json:"throughputRatio,omitempty"`
	// ServedViaClusterIP is how many request/response connections the
	// server pod accepted during this run (the client makes them only to
	// the ClusterIP, warm-up included): the evidence that the answers came
	// from it.
	ServedViaClusterIP int64  `json:"servedViaClusterIP,omitempty"`
	Unavailable        string `json:"unavailable,omitempty"`
}

// RunDatapath measures every mode at every service count, each mode in a
// topology of its own (see topo_datapath.go) that is removed afterwards.
func RunDatapath(ctx context.Context, opts DatapathOptions) ([]DatapathRun, error) {
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	var runs []DatapathRun
	for _, mode := range opts.Modes {
		m, err := modes.Get(mode)
		if err != nil {
			return nil, err
		}
		if err := m.Unavailable(); err != nil {
			runs = append(runs, DatapathRun{Mode: mode, Unavailable: err.Error()})
			continue
		}
		rs, err := runDatapathMode(ctx, m, opts)
		if err != nil {
			return nil, fmt.Errorf("bench datapath %s: %w", mode, err)
		}
		runs = append(runs, rs...)
	}
	return runs, nil
}

func runDatapathMode(ctx context.Context, m modes.Mode, opts DatapathOptions) (_ []DatapathRun, err error) {
	mode := m.Name
	t, err := newDatapathTopo(ctx, opts.OnNamespace)
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, t.Close()) }()
	be := m.New(modes.Options{NetNS: t.node})
	if c, ok := be.(io.Closer); ok {
		t.set.onClose(c.Close)
	}
	var runs []DatapathRun
	for _, n := range opts.Services {
		progress(opts.Progress, "%s: %d services", mode, n)
		if err := be.Sync(ctx, datapathDesired(n)); err != nil {
			return nil, fmt.Errorf("program %d services: %w", n, err)
		}
		r, err := measureDatapath(ctx, t, opts)
		if err != nil {
			return nil, fmt.Errorf("%d services: %w", n, err)
		}
		r.Mode, r.Services = mode, n
		runs = append(runs, r)
	}
	return runs, nil
}

// measureDatapath times first packets to the ClusterIP, then one stream
// through it and one straight to the server pod.
func measureDatapath(ctx context.Context, t *datapathTopo, opts DatapathOptions) (DatapathRun, error) {
	before := t.srv.echoes.Load()
	// Warm up: the neighbour entries and the first conntrack entries.
	if _, err := firstPackets(ctx, t.client, t.clusterAddr(), 10, opts.SampleTime); err != nil {
		return DatapathRun{}, err
	}
	ds, err := firstPackets(ctx, t.client, t.clusterAddr(), opts.Samples, opts.SampleTime)
	if err != nil {
		return DatapathRun{}, err
	}
	via, direct, err := throughputPair(ctx, t.client, t.clusterAddr(), t.directAddr(), opts.Duration)
	if err != nil {
		return DatapathRun{}, err
	}
	l := summarize(ds)
	return DatapathRun{
		P50Seconds: l.P50, P90Seconds: l.P90, P99Seconds: l.P99, Samples: l.Samples,
		ThroughputBitsPerSecond: via, DirectBitsPerSecond: direct, ThroughputRatio: via / direct,
		ServedViaClusterIP: t.srv.echoes.Load() - before,
	}, nil
}

// webPort is the measured service: bench/web:http, ClusterIP
// 10.111.255.1:80 -> the server pod's 8080. Its name sorts after the
// generated services', so it comes last wherever a backend walks services
// in order (iptables' KUBE-SERVICES): the worst case of a linear lookup.
func webPort() model.ServicePort {
	return model.ServicePort{
		Name:       model.ServicePortName{Namespace: "bench", Name: "web", Port: "http", Protocol: model.ProtocolTCP},
		ClusterIPs: []netip.Addr{dpClusterIP},
		Port:       int(dpServicePort),
		Endpoints: []model.Endpoint{{IP: dpServerIP, Port: int(dpServerPort), NodeName: dpNodeName,
			Ready: true, Serving: true}},
	}
}

// datapathDesired is the node's state with n services: n-1 generated ones
// of one endpoint each (nftables.GeneratedPort, endpoints at addresses no
// namespace holds) and webPort.
func datapathDesired(n int) *proxy.Desired {
	node := model.Node{Name: dpNodeName, IPs: []netip.Addr{dpNodeIP}}
	cfg := proxy.Config{ClusterCIDRs: []netip.Prefix{dpClusterCIDR}}
	d := proxy.NewDesired(cfg, node)
	for i := range n - 1 {
		d.Services = append(d.Services, proxy.Resolve(nftables.GeneratedPort(i, 1), node))
	}
	d.Services = append(d.Services, proxy.Resolve(webPort(), node))
	return d
}

func progress(fn func(string), format string, args ...any) {
	if fn != nil {
		fn(fmt.Sprintf(format, args...))
	}
}
