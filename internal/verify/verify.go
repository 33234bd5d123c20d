package verify

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/lab"
	"github.com/kdive/kdive/internal/proxy"
)

// InspectFunc reads the load-balancing state of the proxy in mode back
// from the kernel of the node whose namespace is ns.
type InspectFunc func(ctx context.Context, ns *kernel.NetNS, mode string) (proxy.Inspection, error)

// ErrInspectUnavailable is returned (wrapped) by an InspectFunc when this
// build cannot read the mode's tables; the consistency check is then
// skipped, saying so, rather than failed.
var ErrInspectUnavailable = errors.New("no kernel reader for the proxy's tables in this build")

// Options say which lab to verify and how.
type Options struct {
	// Lab is the name of a running lab.
	Lab string
	// Binaries are what the lab's new pods run (kdive echo).
	Binaries lab.Binaries
	// Checks limits the run to these check names (see Checks); empty
	// runs them all.
	Checks []string
	// Keep leaves the workload in the lab afterwards.
	Keep bool
	// Inspect reads a node's proxy tables; nil skips the consistency check.
	Inspect InspectFunc
	// RequestTimeout bounds each request; default 3s.
	RequestTimeout time.Duration
	// SyncTimeout bounds the wait for the workload to be in place (in a
	// Kubernetes lab: its pods running and ready, their EndpointSlices,
	// the LoadBalancer IPs) and, again, for the agents to program it;
	// default 60s, 3 minutes in a Kubernetes lab.
	SyncTimeout time.Duration
}

// Result is one check's outcome. Its JSON field names are stable.
type Result struct {
	Name string `json:"name"`
	// OK is false only for a failure; a skipped check is OK.
	OK      bool `json:"ok"`
	Skipped bool `json:"skipped,omitempty"`
	// Reason says why the check failed or was skipped.
	Reason string `json:"reason,omitempty"`
	// Summary says what was measured, in one line.
	Summary string `json:"summary,omitempty"`
	// Details are one line per failed probe, or per sub-result.
	Details      []string           `json:"details,omitempty"`
	Measurements map[string]float64 `json:"measurements,omitempty"`
	Seconds      float64            `json:"seconds"`
}

// Report is a whole run.
type Report struct {
	Lab       string   `json:"lab"`
	ProxyMode string   `json:"proxyMode"`
	OK        bool     `json:"ok"`
	Results   []Result `json:"results"`
}

// Failed lists the names of the failed checks.
func (r *Report) Failed() []string {
	var out []string
	for _, res := range r.Results {
		if !res.OK {
			out = append(out, res.Name)
		}
	}
	return out
}

// check is one named check of the suite.
type check struct {
	name  string
	about string
	run   func(ctx context.Context, e *env) Result
}

// CheckInfo names a check and says what it does.
type CheckInfo struct{ Name, About string }

// suite is every check, in the order they run and are reported.
var suite = []check{
	{"pod-to-pod-same-node", "each pod reaches another pod on its node, which sees the pod's own IP", checkPodToPodSameNode},
	{"pod-to-pod-same-subnet", "a pod reaches every pod on the other nodes of its subnet (no encapsulation), source kept", checkPodToPodSameSubnet},
	{"pod-to-pod-cross-subnet", "a pod reaches every pod on the nodes of other subnets (encapsulated), source kept", checkPodToPodCrossSubnet},
	{"node-to-pod", "every node reaches every pod of the workload", checkNodeToPod},
	{"pod-to-clusterip", "a pod on every node reaches a ClusterIP, answered by an endpoint that sees the pod's IP", checkPodToClusterIP},
	{"node-to-clusterip", "every node reaches a ClusterIP", checkNodeToClusterIP},
	{"external-to-nodeport-local", "the external client reaches a NodePort on the node running the endpoint", checkNodePortLocal},
	{"external-to-nodeport-remote", "the external client reaches a NodePort on nodes whose endpoint runs on another node", checkNodePortRemote},
	{"external-to-loadbalancer", "the external client, admitted by loadBalancerSourceRanges, reaches a LoadBalancer IP", checkLoadBalancer},
	{"loadbalancer-source-ranges", "a source outside loadBalancerSourceRanges is refused", checkSourceRanges},
	{"session-affinity", "with sessionAffinity ClientIP every new connection of a client lands on one pod", checkAffinity},
	{"external-traffic-policy-local", "through an externalTrafficPolicy Local LoadBalancer the endpoint sees the client's own IP", checkETPLocal},
	{"health-check-node-port", "the healthCheckNodePort answers 200 on nodes with a local endpoint, 503 elsewhere", checkHealthCheck},
	{"hairpin", "a pod reaches itself through its own service", checkHairpin},
	{"udp-service", "a pod on every node gets a datagram answered through a UDP ClusterIP port", checkUDP},
	{"large-request", "a 64 KiB request body crosses every pair of nodes and a NodePort (MTU, fragmentation, PMTU)", checkLargeRequest},
	{"spread", fmt.Sprintf("%d new connections to a ClusterIP spread evenly over its endpoints (chi-square, fail if p < %g)", spreadRequests, spreadAlpha), checkSpread},
	{"consistency", "every node's load-balancing table, read from the kernel, equals what the API objects ask for", checkConsistency},
}

// Checks lists the checks of the suite in order.
func Checks() []CheckInfo {
	out := make([]CheckInfo, len(suite))
	for i, c := range suite {
		out[i] = CheckInfo{c.name, c.about}
	}
	return out
}

// selectChecks resolves names to checks, in suite order.
func selectChecks(names []string) ([]check, error) {
	if len(names) == 0 {
		return suite, nil
	}
	var unknown []string
	for _, n := range names {
		if !slices.ContainsFunc(suite, func(c check) bool { return c.name == n }) {
			unknown = append(unknown, n)
		}
	}
	if len(unknown) > 0 {
		var all []string
		for _, c := range suite {
			all = append(all, c.name)
		}
		return nil, fmt.Errorf("unknown check %s; checks are %s", strings.Join(unknown, ", "), strings.Join(all, ", "))
	}
	var out []check
	for _, c := range suite {
		if slices.Contains(names, c.name) {
			out = append(out, c)
		}
	}
	return out, nil
}

// Run verifies a lab: it applies the workload, waits for the agents, runs
// the checks and removes the workload again (unless Keep). A failing check
// is a Result, not an error; the error is for what kept the suite from
// running (no such lab, an unknown check) or from cleaning up.
func Run(ctx context.Context, opts Options) (*Report, error) {
	checks, err := selectChecks(opts.Checks)
	if err != nil {
		return nil, err
	}
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = 3 * time.Second
	}
	st, err := lab.Load(opts.Lab)
	if err != nil {
		return nil, err
	}
	if opts.SyncTimeout <= 0 && st.Plan.Kubernetes != nil {
		opts.SyncTimeout = 3 * time.Minute // its pods take a while to start
	}
	if opts.SyncTimeout <= 0 {
		opts.SyncTimeout = 60 * time.Second
	}
	e := &env{opts: opts, st: st, plan: st.Plan, nss: map[string]*kernel.NetNS{}}
	defer e.close()
	rep := &Report{Lab: opts.Lab, ProxyMode: st.Plan.Proxy.Mode}

	start := time.Now()
	setup := e.deploy(ctx)
	setup.Name = "workload"
	setup.Seconds = time.Since(start).Seconds()
	rep.Results = append(rep.Results, setup)
	if setup.OK {
		for _, c := range checks {
			start := time.Now()
			r := c.run(ctx, e)
			r.Name = c.name
			r.OK = r.OK || r.Skipped
			r.Seconds = time.Since(start).Seconds()
			rep.Results = append(rep.Results, r)
		}
	}
	rep.OK = len(rep.Failed()) == 0
	if !opts.Keep {
		if err := removeWorkload(context.WithoutCancel(ctx), opts.Lab); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

// env is what the checks share: the lab, the workload as applied, and the
// namespaces opened so far.
type env struct {
	opts Options
	st   *lab.State
	plan *lab.Plan
	w    *workload

	mu  sync.Mutex
	nss map[string]*kernel.NetNS // by name
}

// netns opens (once) a namespace of the lab.
func (e *env) netns(name string) (*kernel.NetNS, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if n, ok := e.nss[name]; ok {
		return n, nil
	}
	n, err := kernel.OpenNetNS(name)
	if err != nil {
		return nil, err
	}
	e.nss[name] = n
	return n, nil
}

func (e *env) close() {
	e.mu.Lock()
	defer e.mu.Unlock()
	for k, n := range e.nss {
		n.Close()
		delete(e.nss, k)
	}
}

func pass(summary string) Result { return Result{OK: true, Summary: summary} }

func skip(reason string) Result { return Result{OK: true, Skipped: true, Reason: reason} }

func fail(reason string, details ...string) Result {
	return Result{Reason: reason, Details: details}
}
