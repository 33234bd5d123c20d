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
// Ports: HTTP on 8080/TCP, datagrams on 5353/UDP.
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
  loadBalancerSourceRanges: [{{.Admitted}}]
  selector: {app: local}
  ports:
  - {name: http, port: 80, targetPort: 8080, protocol: TCP}
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
`))

// Names of the workload's objects: pods are named echo-N (on node N mod
// the node count) and local-0.
const (
	podsEcho    = "echo"
	podsLocal   = "local"
	svcEcho     = "echo"
	svcAffinity = "affinity"
	svcNodePort = "nodeport"
	svcLBLocal  = "lb-local"
	svcLBClosed = "lb-closed"
	echoPort    = 8080
)

// workloadYAML renders the workload for a lab: two echo pods per node,
// so every node has a pod and a second one to talk to, and local-0 on the
// first node. lb-local admits exactly the external client; lb-closed
// admits only the address after it, which nothing uses.
func workloadYAML(p *lab.Plan) []byte {
	type pod struct{ Name, App, Node string }
	var pods []pod
	for i := range min(2*len(p.Nodes), 100) {
		pods = append(pods, pod{fmt.Sprintf("%s-%d", podsEcho, i), podsEcho, p.Nodes[i%len(p.Nodes)].Name})
	}
	pods = append(pods, pod{podsLocal + "-0", podsLocal, p.Nodes[0].Name})
	var b bytes.Buffer
	_ = workloadTmpl.Execute(&b, map[string]any{
		"NS": Namespace, "Pods": pods,
		"Admitted": netip.PrefixFrom(p.External.IP, 32).String(),
		"Closed":   netip.PrefixFrom(p.External.IP.Next(), 32).String(),
	})
	return b.Bytes()
}

// podRef is a pod of the workload.
type podRef struct {
	Name  string // "echo-0"
	Node  string
	IP    netip.Addr
	NetNS string
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
	before, err := lab.Snapshot(ctx, e.st)
	if err != nil {
		return fail("read the lab's objects: " + err.Error())
	}
	changes, err := lab.Apply(ctx, e.plan.Name, workloadYAML(e.plan), e.opts.Binaries)
	if err != nil {
		return fail("apply the workload: "+err.Error(), changes...)
	}
	start := time.Now()
	after, err := e.waitWorkload(ctx)
	if err != nil {
		return fail(err.Error())
	}
	summary := fmt.Sprintf("%d pods on %d nodes, %d services in namespace %s", len(e.w.echo)+1, len(e.plan.Nodes), len(e.w.svc), Namespace)
	if e.plan.Kubernetes != nil {
		summary += fmt.Sprintf(", ready after %.1fs", time.Since(start).Seconds())
	}
	if sameObjects(before, after) {
		return pass(summary + "; already in place")
	}
	// Agents must have synced after the last change (one may well have
	// synced it before Apply returned).
	changedAt, err := lab.LastChange(e.st, after, Namespace)
	if err != nil {
		return fail(err.Error())
	}
	took, err := e.waitSynced(ctx, changedAt)
	if err != nil {
		return fail(err.Error())
	}
	return pass(fmt.Sprintf("%s; every agent synced it within %.1fs of the last change", summary, took.Seconds()))
}

// waitWorkload reads the workload back until it is in place: at once in
// a plain lab, whose apply returns when it is; a Kubernetes lab's
// controllers, kubelets and cloud take their time (pods to start, their
// EndpointSlices, the LoadBalancer IPs), bounded by SyncTimeout.
func (e *env) waitWorkload(ctx context.Context) (*labstore.Snapshot, error) {
	deadline := time.Now().Add(e.opts.SyncTimeout)
	for {
		snap, err := lab.Snapshot(ctx, e.st)
		if err == nil {
			e.w, err = readWorkload(e.st, snap)
			if err == nil {
				return snap, nil
			}
		}
		if e.plan.Kubernetes == nil {
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

// readWorkload finds the workload in a snapshot of the lab, and says what
// is not in place yet: a pod not running and ready (or still terminating),
// a Service without its cluster IP or LoadBalancer IP, a Service whose
// ready endpoints are not exactly its pods.
func readWorkload(s *lab.State, snap *labstore.Snapshot) (*workload, error) {
	w := &workload{onNode: map[string][]podRef{}, svc: map[string]svcRef{}}
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
		netns, err := lab.PodNetNSPath(s, pod)
		if err != nil {
			pending = append(pending, fmt.Sprintf("%s (%v)", pod.Name, err))
			continue
		}
		ref := podRef{Name: pod.Name, Node: pod.Spec.NodeName, IP: ip, NetNS: netns}
		switch {
		case strings.HasPrefix(pod.Name, podsEcho+"-"):
			w.echo = append(w.echo, ref)
		case strings.HasPrefix(pod.Name, podsLocal+"-"):
			w.local = ref
		}
	}
	if len(pending) > 0 {
		return nil, fmt.Errorf("pods of the workload not running and ready: %s", strings.Join(pending, ", "))
	}
	if len(w.echo) == 0 || w.local.Name == "" {
		return nil, fmt.Errorf("the workload's pods are not in the lab")
	}
	slices.SortFunc(w.echo, func(a, b podRef) int { return ordinal(a.Name) - ordinal(b.Name) })
	for _, pod := range append(slices.Clone(w.echo), w.local) {
		w.onNode[pod.Node] = append(w.onNode[pod.Node], pod)
	}
	for _, name := range []string{svcEcho, svcAffinity, svcNodePort, svcLBLocal, svcLBClosed} {
		i := slices.IndexFunc(snap.Services, func(s corev1.Service) bool { return s.Namespace == Namespace && s.Name == name })
		if i < 0 {
			return nil, fmt.Errorf("service %s/%s is not in the lab", Namespace, name)
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
		if !ref.ClusterIP.IsValid() || (svc.Spec.Type == corev1.ServiceTypeLoadBalancer && !ref.LBIP.IsValid()) {
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
// agents' /healthz, as a kube-proxy health check would.
func (e *env) waitSynced(ctx context.Context, changedAt time.Time) (time.Duration, error) {
	deadline := time.Now().Add(e.opts.SyncTimeout)
	var last map[string]time.Time
	var stableSince time.Time
	for {
		cur, lag := map[string]time.Time{}, []string{}
		for _, n := range e.plan.Nodes {
			h, err := e.agentHealth(ctx, n.NetNS)
			switch {
			case err != nil:
				lag = append(lag, fmt.Sprintf("%s: %v", n.Name, err))
			case !h.LastUpdated.After(changedAt):
				msg := n.Name + ": no sync since the workload was applied"
				if h.LastError != "" {
					msg += " (last error: " + h.LastError + ")"
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
		case !sameTimes(cur, last):
			stableSince = now
		case now.Sub(stableSince) >= syncGrace:
			var latest time.Time
			for _, t := range cur {
				if t.After(latest) {
					latest = t
				}
			}
			return latest.Sub(changedAt), nil
		}
		last = cur
		if now.After(deadline) {
			if len(lag) == 0 {
				lag = []string{"the agents kept syncing"}
			}
			return 0, fmt.Errorf("agents did not program the workload within %s: %s", e.opts.SyncTimeout, strings.Join(lag, "; "))
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(100 * time.Millisecond):
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
	LastError   string    `json:"lastError"`
}

func (e *env) agentHealth(ctx context.Context, netns string) (agentHealth, error) {
	var h agentHealth
	ns, err := e.netns(netns)
	if err != nil {
		return h, err
	}
	// 503 (a pending change) still carries lastUpdated.
	_, body, err := httpDo(ctx, ns, "GET", agentHealthz, nil, time.Second)
	if err != nil {
		return h, err
	}
	if err := json.Unmarshal(body, &h); err != nil {
		return h, fmt.Errorf("agent /healthz: %w", err)
	}
	return h, nil
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
