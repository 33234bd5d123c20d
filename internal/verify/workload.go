package verify

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/template"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/kdive/kdive/internal/lab"
	"github.com/kdive/kdive/internal/source/labstore"
)

// Namespace holds everything the suite applies to a lab.
const Namespace = "kdive-verify"

// The workload: echo pods everywhere, one pod pinned to the first node
// (so that NodePort, externalTrafficPolicy Local and health checks have
// nodes with and without a local endpoint), and the Services the checks
// need. Ports: HTTP on 8080/TCP, datagrams on 5353/UDP.
var workloadTmpl = template.Must(template.New("workload").Parse(`
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo, namespace: {{.NS}}}
spec:
  replicas: {{.Replicas}}
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      containers:
      - name: echo
        image: kdive-echo
        ports:
        - {name: http, containerPort: 8080, protocol: TCP}
        - {name: udp, containerPort: 5353, protocol: UDP}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: local, namespace: {{.NS}}}
spec:
  replicas: 1
  selector: {matchLabels: {app: local}}
  template:
    metadata: {labels: {app: local}}
    spec:
      nodeSelector: {kubernetes.io/hostname: {{.LocalNode}}}
      containers:
      - name: echo
        image: kdive-echo
        ports:
        - {name: http, containerPort: 8080, protocol: TCP}
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

// Names of the workload's objects.
const (
	deployEcho  = "echo"
	deployLocal = "local"
	svcEcho     = "echo"
	svcAffinity = "affinity"
	svcNodePort = "nodeport"
	svcLBLocal  = "lb-local"
	svcLBClosed = "lb-closed"
	echoPort    = 8080
)

// workloadYAML renders the workload for a lab: two echo pods per node
// (the lab spreads replicas round-robin), so every node has a pod and a
// second one to talk to. lb-local admits exactly the external client;
// lb-closed admits only the address after it, which nothing uses.
func workloadYAML(p *lab.Plan) []byte {
	replicas := min(2*len(p.Nodes), 100)
	var b bytes.Buffer
	_ = workloadTmpl.Execute(&b, map[string]any{
		"NS": Namespace, "Replicas": replicas, "LocalNode": p.Nodes[0].Name,
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

// workload is what was applied, read back from the lab's store.
type workload struct {
	echo   []podRef            // the echo Deployment's pods, by ordinal
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
		if strings.HasPrefix(p.Name, deployEcho+"-") {
			return p, true
		}
	}
	return podRef{}, false
}

// storeOf is the lab's object store (README: /run/kdive/labs/LAB/store).
func storeOf(name string) *labstore.Store {
	return labstore.Open(filepath.Join(lab.Dir(name), "store"))
}

// deploy applies the workload, reads it back and, when anything changed,
// waits until every node's agent has synced it. Its Result is the suite's
// first row, named "workload".
func (e *env) deploy(ctx context.Context) Result {
	store := storeOf(e.plan.Name)
	before, err := store.Read()
	if err != nil {
		return fail("read the lab's store: " + err.Error())
	}
	changes, err := lab.Apply(ctx, e.plan.Name, workloadYAML(e.plan), e.opts.Binaries)
	if err != nil {
		return fail("apply the workload: "+err.Error(), changes...)
	}
	// The time of the store's last write: agents must have synced after
	// it (an agent may well have synced it before Apply returned).
	fi, err := os.Stat(store.Path())
	if err != nil {
		return fail("read the lab's store: " + err.Error())
	}
	changedAt := fi.ModTime()
	after, err := store.Read()
	if err != nil {
		return fail("read the lab's store: " + err.Error())
	}
	e.w, err = readWorkload(e.plan, after)
	if err != nil {
		return fail(err.Error())
	}
	summary := fmt.Sprintf("%d pods on %d nodes, %d services in namespace %s", len(e.w.echo)+1, len(e.plan.Nodes), len(e.w.svc), Namespace)
	if sameObjects(before, after) {
		return pass(summary + "; already in place")
	}
	took, err := e.waitSynced(ctx, changedAt)
	if err != nil {
		return fail(err.Error())
	}
	return pass(fmt.Sprintf("%s; every agent synced it within %.1fs of the last change", summary, took.Seconds()))
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

// readWorkload finds the workload's pods and services in a snapshot.
func readWorkload(p *lab.Plan, snap *labstore.Snapshot) (*workload, error) {
	w := &workload{onNode: map[string][]podRef{}, svc: map[string]svcRef{}}
	var pending []string
	for _, pod := range snap.Pods {
		if pod.Namespace != Namespace {
			continue
		}
		ip, err := netip.ParseAddr(pod.Status.PodIP)
		if err != nil {
			pending = append(pending, pod.Name)
			continue
		}
		ref := podRef{Name: pod.Name, Node: pod.Spec.NodeName, IP: ip, NetNS: lab.PodNetNS(p.Name, pod.Namespace, pod.Name)}
		switch {
		case strings.HasPrefix(pod.Name, deployEcho+"-"):
			w.echo = append(w.echo, ref)
		case strings.HasPrefix(pod.Name, deployLocal+"-"):
			w.local = ref
		}
	}
	if len(pending) > 0 {
		return nil, fmt.Errorf("pods %s of the workload have no IP", strings.Join(pending, ", "))
	}
	if len(w.echo) == 0 || w.local.Name == "" {
		return nil, fmt.Errorf("the workload's pods are not in the lab's store")
	}
	slices.SortFunc(w.echo, func(a, b podRef) int { return ordinal(a.Name) - ordinal(b.Name) })
	for _, pod := range append(slices.Clone(w.echo), w.local) {
		w.onNode[pod.Node] = append(w.onNode[pod.Node], pod)
	}
	for _, name := range []string{svcEcho, svcAffinity, svcNodePort, svcLBLocal, svcLBClosed} {
		i := slices.IndexFunc(snap.Services, func(s corev1.Service) bool { return s.Namespace == Namespace && s.Name == name })
		if i < 0 {
			return nil, fmt.Errorf("service %s/%s is not in the lab's store", Namespace, name)
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
		w.svc[name] = ref
	}
	return w, nil
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

// removeWorkload deletes the workload's objects that are there.
func removeWorkload(ctx context.Context, name string) error {
	st, err := lab.Load(name)
	if err != nil {
		return err
	}
	snap, err := storeOf(name).Read()
	if err != nil {
		return err
	}
	var objs []string
	for _, s := range snap.Services {
		if s.Namespace == Namespace {
			objs = append(objs, "service/"+Namespace+"/"+s.Name)
		}
	}
	for _, d := range []string{deployEcho, deployLocal} {
		inPlan := slices.ContainsFunc(st.Plan.Objects.Deployments, func(o appsv1.Deployment) bool { return o.Namespace == Namespace && o.Name == d })
		hasPods := slices.ContainsFunc(snap.Pods, func(p corev1.Pod) bool {
			return p.Namespace == Namespace && strings.HasPrefix(p.Name, d+"-")
		})
		if inPlan || hasPods {
			objs = append(objs, "deployment/"+Namespace+"/"+d)
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
