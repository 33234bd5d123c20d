package verify

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"text/template"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/kdive/kdive/internal/lab"
	"github.com/kdive/kdive/internal/source/labstore"
)

// Namespace holds everything the suite applies to a lab.
const Namespace = "kdive-verify"

// The workload: two echo pods on every node, one more pod on the first
// node (so that NodePort, externalTrafficPolicy Local and health checks
// have nodes with and without a local endpoint), and the Services the
// checks need. Every pod names its node (spec.nodeName, as a DaemonSet's
// pods do): the checks need each node's pods where they are and by their
// names, whether the lab places them itself or a scheduler would.
// Ports: HTTP on 8080/TCP, datagrams on 5353/UDP. On a cluster a
// host-network pod on every node (host-N) sends the nodes' traffic, and
// there is no external client: lb-local admits every source and lb-closed
// is left out.
var workloadTmpl = template.Must(template.New("workload").Parse(`
{{- range .Pods}}
---
apiVersion: v1
kind: Pod
metadata: {name: {{.Name}}, namespace: {{$.NS}}, labels: {app: {{.App}}}}
spec:
  nodeName: {{.Node}}
  containers:
  - name: echo
    image: kdive-echo
    ports:
    - {name: http, containerPort: 8080, protocol: TCP}
{{- if eq .App "echo"}}
    - {name: udp, containerPort: 5353, protocol: UDP}
{{- end}}
{{- end}}
{{- range .Hosts}}
---
apiVersion: v1
kind: Pod
metadata: {name: {{.Name}}, namespace: {{$.NS}}, labels: {app: {{.App}}}}
spec:
  nodeName: {{.Node}}
  hostNetwork: true
  containers:
  - name: probe
    image: kdive-echo
{{- end}}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: {{.NS}}}
spec:
  selector: {app: echo}
  ports:
  - {name: http, port: 80, targetPort: 8080, protocol: TCP}
  - {name: udp, port: 53, targetPort: 5353, protocol: UDP}
---
apiVersion: v1
kind: Service
metadata: {name: affinity, namespace: {{.NS}}}
spec:
  selector: {app: echo}
  sessionAffinity: ClientIP
  ports:
  - {name: http, port: 80, targetPort: 8080, protocol: TCP}
---
apiVersion: v1
kind: Service
metadata: {name: nodeport, namespace: {{.NS}}}
spec:
  type: NodePort
  externalTrafficPolicy: Cluster
  selector: {app: local}
  ports:
  - {name: http, port: 80, targetPort: 8080, protocol: TCP}
---
apiVersion: v1
kind: Service
metadata: {name: lb-local, namespace: {{.NS}}}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
{{- if .Admitted}}
  loadBalancerSourceRanges: [{{.Admitted}}]
{{- end}}
  selector: {app: local}
  ports:
  - {name: http, port: 80, targetPort: 8080, protocol: TCP}
{{- if .Closed}}
---
apiVersion: v1
kind: Service
metadata: {name: lb-closed, namespace: {{.NS}}}
spec:
  type: LoadBalancer
  loadBalancerSourceRanges: [{{.Closed}}]
  selector: {app: echo}
  ports:
  - {name: http, port: 80, targetPort: 8080, protocol: TCP}
{{- end}}
`))

// Names of the workload's objects: pods are named echo-N (on node N mod
// the node count) and local-0.
const (
	podsEcho    = "echo"
	podsLocal   = "local"
	podsHost    = "host"
	svcEcho     = "echo"
	svcAffinity = "affinity"
	svcNodePort = "nodeport"
	svcLBLocal  = "lb-local"
	svcLBClosed = "lb-closed"
	echoPort    = 8080
)

// workloadSpec is what the workload is rendered from: the nodes, by name,
// and the lab's external client (invalid on a cluster).
type workloadSpec struct {
	Nodes    []string
	External netip.Addr
	// Hosts adds a host-network pod on every node (on a cluster: its
	// nodes' own traffic starts there).
	Hosts bool
}

func (e *env) spec() workloadSpec {
	w := workloadSpec{Hosts: e.kind == onCluster}
	for _, n := range e.nodes {
		w.Nodes = append(w.Nodes, n.Name)
	}
	if e.external != nil {
		w.External = e.external.IP
	}
	return w
}

// workloadYAML renders the workload: two echo pods per node, so every
// node has a pod and a second one to talk to, and local-0 on the first
// node. In a lab lb-local admits exactly the external client and lb-closed
// only the address after it, which nothing uses.
func workloadYAML(w workloadSpec) []byte {
	type pod struct{ Name, App, Node string }
	var pods, hosts []pod
	for i := range min(2*len(w.Nodes), 100) {
		pods = append(pods, pod{fmt.Sprintf("%s-%d", podsEcho, i), podsEcho, w.Nodes[i%len(w.Nodes)]})
	}
	pods = append(pods, pod{podsLocal + "-0", podsLocal, w.Nodes[0]})
	if w.Hosts {
		for i, n := range w.Nodes {
			hosts = append(hosts, pod{fmt.Sprintf("%s-%d", podsHost, i), podsHost, n})
		}
	}
	params := map[string]any{"NS": Namespace, "Pods": pods, "Hosts": hosts, "Admitted": "", "Closed": ""}
	if w.External.IsValid() {
		params["Admitted"] = netip.PrefixFrom(w.External, 32).String()
		params["Closed"] = netip.PrefixFrom(w.External.Next(), 32).String()
	}
	var b bytes.Buffer
	_ = workloadTmpl.Execute(&b, params)
	return b.Bytes()
}

// podRef is a pod of the workload.
type podRef struct {
	Name string // "echo-0"
	Node string
	IP   netip.Addr
	from origin
}

func (p podRef) String() string { return Namespace + "/" + p.Name }

// svcRef is a Service of the workload as the lab allocated it.
type svcRef struct {
	ClusterIP           netip.Addr
	Ports               map[string]corev1.ServicePort // by port name
	LBIP                netip.Addr
	HealthCheckNodePort int
}

func (s svcRef) addr(port string) netip.AddrPort {
	return netip.AddrPortFrom(s.ClusterIP, uint16(s.Ports[port].Port))
}

// workload is what was applied, read back from the lab.
type workload struct {
	echo   []podRef            // the echo pods, by ordinal
	local  podRef              // the pod pinned to the first node
	onNode map[string][]podRef // every workload pod by node: echo pods first
	svc    map[string]svcRef
	host   map[string]origin // a cluster's host-network pods, by node
}

// echoNames is the set of echo pods, the endpoints of svcEcho.
func (w *workload) echoNames() map[string]bool {
	out := map[string]bool{}
	for _, p := range w.echo {
		out[p.Name] = true
	}
	return out
}

// client is the pod that sends a node's pod traffic: its first echo pod.
func (w *workload) client(node string) (podRef, bool) {
	for _, p := range w.onNode[node] {
		if strings.HasPrefix(p.Name, podsEcho+"-") {
			return p, true
		}
	}
	return podRef{}, false
}

// deploy applies the workload, waits until it is in place (readWorkload)
// and, when anything changed, until every node's agent has synced it. Its
// Result is the suite's first row, named "workload".
func (e *env) deploy(ctx context.Context) Result {
	before, err := e.target.snapshot(ctx)
	if err != nil {
		return fail("read the objects: " + err.Error())
	}
	spec := e.spec()
	changes, err := e.target.apply(ctx, spec)
	if err != nil {
		return fail("apply the workload: "+err.Error(), changes...)
	}
	start := time.Now()
	after, err := e.waitWorkload(ctx, spec)
	if err != nil {
		return fail(err.Error())
	}
	summary := fmt.Sprintf("%d pods on %d nodes, %d services in namespace %s", len(e.w.echo)+1, len(e.nodes), len(e.w.svc), Namespace)
	if len(e.w.host) > 0 {
		summary += ", a host-network pod on each node"
	}
	if e.target.settles() {
		summary += fmt.Sprintf(", ready after %.1fs", time.Since(start).Seconds())
	}
	if sameObjects(before, after) {
		return pass(summary + "; already in place")
	}
	// Agents must have synced after the last change (one may well have
	// synced it before Apply returned).
	changedAt, err := e.target.lastChange(after)
	if err != nil {
		return fail(err.Error())
	}
	took, unwatched, err := e.waitSynced(ctx, changedAt)
	if err != nil {
		return fail(err.Error())
	}
	if len(unwatched) == len(e.nodes) {
		return pass(fmt.Sprintf("%s; no node serves a proxy health check to wait for: %s", summary, strings.Join(unwatched, "; ")))
	}
	summary = fmt.Sprintf("%s; every agent synced it within %.1fs of the last change", summary, took.Seconds())
	if len(unwatched) > 0 {
		summary += "; not waited for: " + strings.Join(unwatched, "; ")
	}
	return pass(summary)
}

// waitWorkload reads the workload back until it is in place: at once in
// a plain lab, whose apply returns when it is; a Kubernetes lab's or a
// cluster's controllers, kubelets and cloud take their time (pods to
// start, their EndpointSlices, the LoadBalancer IPs), bounded by
// SyncTimeout.
func (e *env) waitWorkload(ctx context.Context, spec workloadSpec) (*labstore.Snapshot, error) {
	deadline := time.Now().Add(e.opts.SyncTimeout)
	for {
		snap, err := e.target.snapshot(ctx)
		if err == nil {
			e.w, err = readWorkload(e.target, snap, spec)
			if err == nil {
				for i := range e.nodes {
					if o, ok := e.w.host[e.nodes[i].Name]; ok {
						e.nodes[i].host = o
					}
				}
				return snap, nil
			}
		}
		if !e.target.settles() {
			return nil, err
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("the workload is not in place within %s: %w", e.opts.SyncTimeout, err)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// sameObjects says whether the workload's Services and EndpointSlices are
// the same in both snapshots: then no agent has anything to program.
func sameObjects(a, b *labstore.Snapshot) bool {
	pick := func(s *labstore.Snapshot) string {
		var parts []any
		for _, svc := range s.Services {
			if svc.Namespace == Namespace {
				parts = append(parts, svc)
			}
		}
		for _, sl := range s.EndpointSlices {
			if sl.Namespace == Namespace {
				parts = append(parts, sl)
			}
		}
		j, _ := json.Marshal(parts)
		return string(j)
	}
	return pick(a) == pick(b)
}

// readWorkload finds the workload in a snapshot, and says what is not in
// place yet: a pod not running and ready (or still terminating), a
// Service without its cluster IP or (in a lab) LoadBalancer IP, a Service
// whose ready endpoints are not exactly its pods.
func readWorkload(t target, snap *labstore.Snapshot, spec workloadSpec) (*workload, error) {
	w := &workload{onNode: map[string][]podRef{}, svc: map[string]svcRef{}, host: map[string]origin{}}
	var pending []string
	for i := range snap.Pods {
		pod := &snap.Pods[i]
		if pod.Namespace != Namespace {
			continue
		}
		ip, err := netip.ParseAddr(pod.Status.PodIP)
		if err != nil || pod.DeletionTimestamp != nil || pod.Status.Phase != corev1.PodRunning || !lab.PodReady(pod) {
			pending = append(pending, fmt.Sprintf("%s (%s)", pod.Name, podState(pod)))
			continue
		}
		from, err := t.podOrigin(pod)
		if err != nil {
			pending = append(pending, fmt.Sprintf("%s (%v)", pod.Name, err))
			continue
		}
		ref := podRef{Name: pod.Name, Node: pod.Spec.NodeName, IP: ip, from: from}
		switch {
		case strings.HasPrefix(pod.Name, podsEcho+"-"):
			w.echo = append(w.echo, ref)
		case strings.HasPrefix(pod.Name, podsLocal+"-"):
			w.local = ref
		case strings.HasPrefix(pod.Name, podsHost+"-"):
			w.host[ref.Node] = from
		}
	}
	if len(pending) > 0 {
		return nil, fmt.Errorf("pods of the workload not running and ready: %s", strings.Join(pending, ", "))
	}
	if len(w.echo) == 0 || w.local.Name == "" {
		return nil, fmt.Errorf("the workload's pods are not there")
	}
	if spec.Hosts {
		for _, n := range spec.Nodes {
			if w.host[n] == nil {
				return nil, fmt.Errorf("no host-network pod of the workload on %s", n)
			}
		}
	}
	slices.SortFunc(w.echo, func(a, b podRef) int { return ordinal(a.Name) - ordinal(b.Name) })
	for _, pod := range append(slices.Clone(w.echo), w.local) {
		w.onNode[pod.Node] = append(w.onNode[pod.Node], pod)
	}
	names := []string{svcEcho, svcAffinity, svcNodePort, svcLBLocal}
	if spec.External.IsValid() {
		names = append(names, svcLBClosed)
	}
	for _, name := range names {
		i := slices.IndexFunc(snap.Services, func(s corev1.Service) bool { return s.Namespace == Namespace && s.Name == name })
		if i < 0 {
			return nil, fmt.Errorf("service %s/%s is not there", Namespace, name)
		}
		svc := &snap.Services[i]
		ref := svcRef{Ports: map[string]corev1.ServicePort{}, HealthCheckNodePort: int(svc.Spec.HealthCheckNodePort)}
		ref.ClusterIP, _ = netip.ParseAddr(svc.Spec.ClusterIP)
		for _, pt := range svc.Spec.Ports {
			ref.Ports[pt.Name] = pt
		}
		if ing := svc.Status.LoadBalancer.Ingress; len(ing) > 0 {
			ref.LBIP, _ = netip.ParseAddr(ing[0].IP)
		}
		// Only a lab is sure to have a cloud that gives LoadBalancer IPs
		// (and only its external client uses them).
		needLB := svc.Spec.Type == corev1.ServiceTypeLoadBalancer && spec.External.IsValid()
		if !ref.ClusterIP.IsValid() || (needLB && !ref.LBIP.IsValid()) {
			return nil, fmt.Errorf("service %s/%s has no cluster IP or LoadBalancer IP", Namespace, name)
		}
		want := w.echo
		if svc.Spec.Selector["app"] == podsLocal {
			want = []podRef{w.local}
		}
		if err := endpointsAre(snap, name, want); err != nil {
			return nil, err
		}
		w.svc[name] = ref
	}
	return w, nil
}

// endpointsAre checks that the ready endpoints of service name's
// EndpointSlices are exactly the pods'.
func endpointsAre(snap *labstore.Snapshot, name string, pods []podRef) error {
	ready := map[string]bool{}
	for _, sl := range snap.EndpointSlices {
		if sl.Namespace != Namespace || sl.Labels[discoveryv1.LabelServiceName] != name {
			continue
		}
		for _, ep := range sl.Endpoints {
			if ep.Conditions.Ready != nil && *ep.Conditions.Ready {
				for _, a := range ep.Addresses {
					ready[a] = true
				}
			}
		}
	}
	var missing []string
	for _, p := range pods {
		if !ready[p.IP.String()] {
			missing = append(missing, p.Name)
		}
		delete(ready, p.IP.String())
	}
	if len(missing) > 0 || len(ready) > 0 {
		return fmt.Errorf("the EndpointSlices of service %s/%s do not list exactly its ready pods: missing %v, others %v", Namespace, name, missing, slices.Sorted(maps.Keys(ready)))
	}
	return nil
}

// podState is a pod's state in a word or two, as kubectl get pods says it.
func podState(pod *corev1.Pod) string {
	switch {
	case pod.DeletionTimestamp != nil:
		return "Terminating"
	case pod.Status.Phase == corev1.PodRunning && !lab.PodReady(pod):
		return "Running, not ready"
	case pod.Status.Phase == "":
		return "Pending"
	}
	return string(pod.Status.Phase)
}

func ordinal(pod string) int {
	_, n, _ := strings.Cut(pod, "-")
	i, _ := strconv.Atoi(n)
	return i
}

// syncGrace is how long every agent's last successful sync must stay the
// same before the workload counts as programmed: a sync that was already
// running when the store changed ends after the change but may have missed
// it; the agent then syncs again within its minSyncPeriod (100ms).
const syncGrace = 500 * time.Millisecond

// agentHealthz is kube-proxy's health endpoint, which every lab agent
// serves in its node's namespace (healthzBindAddress 0.0.0.0:10256).
const agentHealthz = "http://127.0.0.1:10256/healthz"

// waitSynced waits until every node's agent has synced successfully after
// changedAt and then not again for syncGrace, reading lastUpdated from the
// agents' /healthz from the node's own namespace, as a kube-proxy health
// check would. It returns how long after changedAt the last agent synced.
// On a cluster a node whose health check port refuses (its proxy serves
// none there, or is not kube-proxy's kind) is not waited for but named in
// unwatched.
func (e *env) waitSynced(ctx context.Context, changedAt time.Time) (took time.Duration, unwatched []string, err error) {
	deadline := time.Now().Add(e.opts.SyncTimeout)
	every := 100 * time.Millisecond
	if e.kind == onCluster {
		every = time.Second // each read is an exec
	}
	refused := map[string]bool{}
	var last map[string]time.Time
	var stableSince time.Time
	for {
		cur, lag := map[string]time.Time{}, []string{}
		for _, n := range e.nodes {
			if refused[n.Name] {
				continue
			}
			h, err := e.agentHealth(ctx, n.host)
			switch {
			case err != nil && e.kind == onCluster && strings.Contains(err.Error(), "connection refused"):
				refused[n.Name] = true
				unwatched = append(unwatched, fmt.Sprintf("%s (%s: %v)", n.Name, agentHealthz, err))
			case err != nil:
				lag = append(lag, fmt.Sprintf("%s: %v", n.Name, err))
			case !h.LastUpdated.After(changedAt):
				msg := n.Name + ": no sync since the workload was applied"
				if why := e.agentErrors(ctx, n.host); why != "" {
					msg += " (last error: " + why + ")"
				}
				lag = append(lag, msg)
			default:
				cur[n.Name] = h.LastUpdated
			}
		}
		now := time.Now()
		switch {
		case len(lag) > 0:
			stableSince = time.Time{}
		case len(cur) == 0:
			return 0, unwatched, nil
		case !sameTimes(cur, last):
			stableSince = now
		case now.Sub(stableSince) >= syncGrace:
			var latest time.Time
			for _, t := range cur {
				if t.After(latest) {
					latest = t
				}
			}
			return latest.Sub(changedAt), unwatched, nil
		}
		last = cur
		if now.After(deadline) {
			if len(lag) == 0 {
				lag = []string{"the agents kept syncing"}
			}
			return 0, nil, fmt.Errorf("agents did not program the workload within %s: %s", e.opts.SyncTimeout, strings.Join(lag, "; "))
		}
		select {
		case <-ctx.Done():
			return 0, nil, ctx.Err()
		case <-time.After(every):
		}
	}
}

func sameTimes(a, b map[string]time.Time) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if !b[k].Equal(v) {
			return false
		}
	}
	return true
}

type agentHealth struct {
	LastUpdated time.Time `json:"lastUpdated"`
}

// agentStatus is kdive's /status on the node-local metrics port: why an
// agent is not synced (its /healthz, kube-proxy's, does not say).
const agentStatus = "http://127.0.0.1:10249/status"

// agentErrors is the last errors of the agent's parts, as its /status
// names them; empty when it names none or cannot be read (another proxy
// than kdive's).
func (e *env) agentErrors(ctx context.Context, from origin) string {
	a := from.probe(ctx, ProbeRequest{URL: agentStatus, Timeout: time.Second})[0]
	var st struct {
		Parts map[string]struct {
			LastError string `json:"lastError"`
		} `json:"parts"`
	}
	if a.Err() != nil || json.Unmarshal(a.Body, &st) != nil {
		return ""
	}
	var errs []string
	for _, name := range slices.Sorted(maps.Keys(st.Parts)) {
		if p := st.Parts[name]; p.LastError != "" {
			errs = append(errs, name+": "+p.LastError)
		}
	}
	return strings.Join(errs, "; ")
}

func (e *env) agentHealth(ctx context.Context, from origin) (agentHealth, error) {
	var h agentHealth
	// 503 (a pending change) still carries lastUpdated.
	a := from.probe(ctx, ProbeRequest{URL: agentHealthz, Timeout: time.Second})[0]
	if err := a.Err(); err != nil {
		return h, err
	}
	if err := json.Unmarshal(a.Body, &h); err != nil {
		return h, fmt.Errorf("agent /healthz: %w", err)
	}
	return h, nil
}

// proxyMetricsMode is kube-proxy's /proxyMode on its metrics port, which
// kdive's agent serves too.
const proxyMetricsMode = "http://127.0.0.1:10249/proxyMode"

// proxyMode asks the first node's proxy its mode; empty when it does not
// say.
func (e *env) proxyMode(ctx context.Context) string {
	a := e.nodes[0].host.probe(ctx, ProbeRequest{URL: proxyMetricsMode, Timeout: time.Second})[0]
	if a.Err() != nil || a.Code != 200 || len(a.Body) > 32 {
		return ""
	}
	return strings.TrimSpace(string(a.Body))
}

// removeWorkload deletes the workload's objects that are there: its
// Services and pods.
func removeWorkload(ctx context.Context, name string) error {
	st, err := lab.Load(name)
	if err != nil {
		return err
	}
	snap, err := lab.Snapshot(ctx, st)
	if err != nil {
		return err
	}
	var objs []string
	for _, s := range snap.Services {
		if s.Namespace == Namespace {
			objs = append(objs, "service/"+Namespace+"/"+s.Name)
		}
	}
	for _, p := range snap.Pods {
		if p.Namespace == Namespace {
			objs = append(objs, "pod/"+Namespace+"/"+p.Name)
		}
	}
	var errs []error
	for _, obj := range objs {
		if _, err := lab.Delete(ctx, name, obj); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", obj, err))
		}
	}
	return errors.Join(errs...)
}
