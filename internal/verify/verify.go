package verify

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"net/netip"

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

// Options say which lab or cluster to verify and how.
type Options struct {
	// Lab is the name of a running lab. Without it the suite runs on the
	// cluster of Kubeconfig and Context, through its API only.
	Lab string
	// Kubeconfig and Context choose the cluster as kubectl does: the
	// file (default $KUBECONFIG, else ~/.kube/config) and its context
	// (default the current one).
	Kubeconfig, Context string
	// Image is the kdive image a cluster's workload pods run (default
	// the image deploy/kdive.yaml names).
	Image string
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
	// default 60s, 3 minutes in a Kubernetes lab or on a cluster.
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
	Lab string `json:"lab,omitempty"`
	// Cluster names the cluster verified without a lab: its context and
	// API server.
	Cluster   string   `json:"cluster,omitempty"`
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
	// only names the one kind of target the check runs on; on the other
	// kind a lab-only check is reported skipped with why, a cluster-only
	// one is left out (the lab's own checks cover it).
	only, why string
}

// Kinds of target.
const (
	onLab     = "lab"
	onCluster = "cluster"
)

// Reasons a cluster cannot have a lab's check.
const (
	whyExternal = "needs a client outside the cluster on the nodes' network, which only a lab has; on a cluster it does not own, verify sends from pods and nodes only"
	whySubnets  = "the API does not say which nodes share a subnet; pod-to-pod-other-node checks every pair of nodes"
	whyKernel   = "reading a node's tables needs the node's kernel, which verify reaches only in a lab; on a node run `kdive show lb` (kubectl exec into the kdive pod)"
)

// CheckInfo names a check and says what it does, and where it runs: On
// is "lab" or "cluster" for a check of one kind of target, else empty.
type CheckInfo struct{ Name, About, On string }

// suite is every check, in the order they run and are reported.
var suite = []check{
	{"pod-to-pod-same-node", "each pod reaches another pod on its node, which sees the pod's own IP", checkPodToPodSameNode, "", ""},
	{"pod-to-pod-same-subnet", "a pod reaches every pod on the other nodes of its subnet (no encapsulation), source kept", checkPodToPodSameSubnet, onLab, whySubnets},
	{"pod-to-pod-cross-subnet", "a pod reaches every pod on the nodes of other subnets (encapsulated), source kept", checkPodToPodCrossSubnet, onLab, whySubnets},
	{"pod-to-pod-other-node", "a pod on every node reaches every pod on the other nodes, source kept", checkPodToPodOtherNode, onCluster, ""},
	{"node-to-pod", "every node reaches every pod of the workload", checkNodeToPod, "", ""},
	{"pod-to-clusterip", "a pod on every node reaches a ClusterIP, answered by an endpoint that sees the pod's IP", checkPodToClusterIP, "", ""},
	{"node-to-clusterip", "every node reaches a ClusterIP", checkNodeToClusterIP, "", ""},
	{"node-to-nodeport", "every node reaches the NodePort of every node, local endpoint or not", checkNodeToNodePort, "", ""},
	{"external-to-nodeport-local", "the external client reaches a NodePort on the node running the endpoint", checkNodePortLocal, onLab, whyExternal},
	{"external-to-nodeport-remote", "the external client reaches a NodePort on nodes whose endpoint runs on another node", checkNodePortRemote, onLab, whyExternal},
	{"external-to-loadbalancer", "the external client, admitted by loadBalancerSourceRanges, reaches a LoadBalancer IP", checkLoadBalancer, onLab, whyExternal},
	{"loadbalancer-source-ranges", "a source outside loadBalancerSourceRanges is refused", checkSourceRanges, onLab, whyExternal},
	{"session-affinity", "with sessionAffinity ClientIP every new connection of a client lands on one pod", checkAffinity, "", ""},
	{"external-traffic-policy-local", "through an externalTrafficPolicy Local LoadBalancer the endpoint sees the client's own IP", checkETPLocal, onLab, whyExternal},
	{"health-check-node-port", "the healthCheckNodePort answers 200 on nodes with a local endpoint, 503 elsewhere", checkHealthCheck, "", ""},
	{"hairpin", "a pod reaches itself through its own service", checkHairpin, "", ""},
	{"udp-service", "a pod on every node gets a datagram answered through a UDP ClusterIP port", checkUDP, "", ""},
	{"large-request", "a 64 KiB request body crosses every pair of nodes and a NodePort (MTU, fragmentation, PMTU)", checkLargeRequest, "", ""},
	{"spread", fmt.Sprintf("%d new connections to a ClusterIP spread evenly over its endpoints (chi-square, fail if p < %g)", spreadRequests, spreadAlpha), checkSpread, "", ""},
	{"consistency", "every node's load-balancing table, read from the kernel, equals what the API objects ask for", checkConsistency, onLab, whyKernel},
}

// Checks lists the checks of the suite in order.
func Checks() []CheckInfo {
	out := make([]CheckInfo, len(suite))
	for i, c := range suite {
		out[i] = CheckInfo{c.name, c.about, c.only}
	}
	return out
}

// ChecksOn lists the results a run on a lab (kind "lab") or a cluster
// ("cluster") reports besides the workload: every check but those of the
// other kind that the run leaves out.
func ChecksOn(kind string) []CheckInfo {
	var out []CheckInfo
	for _, c := range Checks() {
		if c.On != onCluster || kind == onCluster {
			out = append(out, c)
		}
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

// Run verifies a lab, or without Options.Lab a cluster: it applies the
// workload, waits for it and the agents, runs the checks and removes the
// workload again (unless Keep). A failing check is a Result, not an error;
// the error is for what kept the suite from running (no such lab, no
// cluster, an unknown check) or from cleaning up.
func Run(ctx context.Context, opts Options) (*Report, error) {
	checks, err := selectChecks(opts.Checks)
	if err != nil {
		return nil, err
	}
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = 3 * time.Second
	}
	e := &env{opts: opts, nss: map[string]*kernel.NetNS{}}
	defer e.close()
	rep := &Report{}
	if opts.Lab != "" {
		err = e.openLab(rep)
	} else {
		err = e.openCluster(ctx, rep)
	}
	if err != nil {
		return nil, err
	}

	start := time.Now()
	setup := e.deploy(ctx)
	setup.Name = "workload"
	setup.Seconds = time.Since(start).Seconds()
	rep.Results = append(rep.Results, setup)
	if setup.OK {
		if rep.ProxyMode == "" {
			rep.ProxyMode = e.proxyMode(ctx)
		}
		for _, c := range checks {
			if c.only == onCluster && e.kind == onLab {
				continue
			}
			start := time.Now()
			var r Result
			if c.only == onLab && e.kind == onCluster {
				r = skip(c.why)
			} else {
				r = c.run(ctx, e)
			}
			r.Name = c.name
			r.OK = r.OK || r.Skipped
			r.Seconds = time.Since(start).Seconds()
			rep.Results = append(rep.Results, r)
		}
	}
	rep.OK = len(rep.Failed()) == 0
	if !opts.Keep {
		if err := e.target.remove(context.WithoutCancel(ctx)); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

// env is what the checks share: the target, its nodes, the workload as
// applied, and the lab namespaces opened so far.
type env struct {
	opts   Options
	kind   string // onLab or onCluster
	target target
	// nodes are the nodes verified, with where their own traffic starts.
	nodes []nodeRef
	// external is the lab's client outside the cluster; nil on a cluster.
	external *nodeRef
	// st and plan are the lab's; nil on a cluster.
	st   *lab.State
	plan *lab.Plan
	w    *workload

	mu  sync.Mutex
	nss map[string]*kernel.NetNS // by name
}

// nodeRef is a node (or the lab's external client) and where traffic from
// its own network namespace starts: the lab's namespace of the node, or a
// cluster's host-network pod on it.
type nodeRef struct {
	Name   string
	IP     netip.Addr
	Subnet string // a lab's; empty on a cluster
	host   origin
}

// An origin is where a probe's traffic starts: a lab namespace, or a pod
// of a cluster that runs `kdive probe` when exec'd.
type origin interface {
	probe(ctx context.Context, r ProbeRequest) []ProbeAnswer
}

// netnsOrigin sends from a lab namespace, opened once.
type netnsOrigin struct {
	e     *env
	netns string
}

func (o netnsOrigin) probe(ctx context.Context, r ProbeRequest) []ProbeAnswer {
	ns, err := o.e.netns(o.netns)
	if err != nil {
		return allFailed(r, err.Error())
	}
	return Probe(ctx, ns.DialContext, r)
}

// allFailed answers every request of r with the same error.
func allFailed(r ProbeRequest, msg string) []ProbeAnswer {
	out := make([]ProbeAnswer, max(r.Count, 1))
	for i := range out {
		out[i].Error = msg
	}
	return out
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
