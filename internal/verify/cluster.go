package verify

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/remotecommand"

	"github.com/kdive/kdive/internal/lab"
	"github.com/kdive/kdive/internal/source"
	"github.com/kdive/kdive/internal/source/labstore"
)

// A cluster the suite does not own is reached only through its API
// server: objects through client-go, traffic by exec'ing `kdive probe` in
// the workload's pods (the pods' own traffic) and in a host-network pod on
// every node (the node's), as `cilium connectivity test` does.

// apiTimeout bounds each API call but exec.
const apiTimeout = 30 * time.Second

// openCluster makes the target the cluster of the kubeconfig: its nodes
// are the Nodes that are Ready and have an InternalIP.
func (e *env) openCluster(ctx context.Context, rep *Report) error {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = e.opts.Kubeconfig
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: e.opts.Context})
	raw, err := cc.RawConfig()
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	cfg, err := cc.ClientConfig()
	if clientcmd.IsEmptyConfig(err) {
		return fmt.Errorf("no cluster in the kubeconfig (--kubeconfig, else $KUBECONFIG or ~/.kube/config): give --lab NAME to verify a lab")
	}
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	name := e.opts.Context
	if name == "" {
		name = raw.CurrentContext
	}
	rep.Cluster = fmt.Sprintf("%s (%s)", name, cfg.Host)
	image := e.opts.Image
	if image == "" {
		if image, err = lab.KdiveImage(); err != nil {
			return err
		}
	}
	if e.opts.SyncTimeout <= 0 {
		e.opts.SyncTimeout = 3 * time.Minute
	}
	e.kind = onCluster
	e.target = &clusterTarget{cs: cs, cfg: cfg, image: image}
	lctx, cancel := context.WithTimeout(ctx, apiTimeout)
	defer cancel()
	nodes, err := cs.CoreV1().Nodes().List(lctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("cluster %s: list the nodes: %w", rep.Cluster, err)
	}
	var left []string
	for _, n := range nodes.Items {
		local, _ := source.Node(&n)
		ip := local.IP()
		switch {
		case !nodeReady(&n):
			left = append(left, n.Name+" (not Ready)")
		case !ip.IsValid():
			left = append(left, n.Name+" (no InternalIP)")
		default:
			e.nodes = append(e.nodes, nodeRef{Name: n.Name, IP: ip})
		}
	}
	if len(e.nodes) == 0 {
		return fmt.Errorf("cluster %s: no node is Ready with an InternalIP: %s", rep.Cluster, strings.Join(left, ", "))
	}
	slices.SortFunc(e.nodes, func(a, b nodeRef) int { return strings.Compare(a.Name, b.Name) })
	return nil
}

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// clusterTarget is a cluster reached through client-go.
type clusterTarget struct {
	cs    kubernetes.Interface
	cfg   *rest.Config
	image string
}

func (t *clusterTarget) settles() bool { return true }

func (t *clusterTarget) snapshot(ctx context.Context) (*labstore.Snapshot, error) {
	ctx, cancel := context.WithTimeout(ctx, apiTimeout)
	defer cancel()
	opts := metav1.ListOptions{}
	pods, err := t.cs.CoreV1().Pods(Namespace).List(ctx, opts)
	if err != nil {
		return nil, err
	}
	svcs, err := t.cs.CoreV1().Services(Namespace).List(ctx, opts)
	if err != nil {
		return nil, err
	}
	slices, err := t.cs.DiscoveryV1().EndpointSlices(Namespace).List(ctx, opts)
	if err != nil {
		return nil, err
	}
	return &labstore.Snapshot{Pods: pods.Items, Services: svcs.Items, EndpointSlices: slices.Items}, nil
}

// apply creates the namespace and each object of the workload that is
// not there yet (a workload kept by --keep is used as it is), with the
// pods made to run kdive's image: `kdive echo` on their ports, `kdive
// probe idle` in the host-network pods.
func (t *clusterTarget) apply(ctx context.Context, w workloadSpec) ([]string, error) {
	var pods []corev1.Pod
	var svcs []corev1.Service
	docs, err := lab.SplitYAML(workloadYAML(w))
	if err != nil {
		return nil, fmt.Errorf("the workload: %w", err)
	}
	for _, doc := range docs {
		var meta metav1.TypeMeta
		if err := json.Unmarshal(doc, &meta); err != nil {
			return nil, fmt.Errorf("the workload: %w", err)
		}
		switch meta.Kind {
		case "Pod":
			var p corev1.Pod
			err = json.Unmarshal(doc, &p)
			t.runKdive(&p)
			pods = append(pods, p)
		case "Service":
			var s corev1.Service
			err = json.Unmarshal(doc, &s)
			svcs = append(svcs, s)
		}
		if err != nil {
			return nil, fmt.Errorf("the workload's %s: %w", meta.Kind, err)
		}
	}
	var changes []string
	ctx, cancel := context.WithTimeout(ctx, 2*apiTimeout)
	defer cancel()
	if err := t.namespace(ctx, &changes); err != nil {
		return changes, err
	}
	for i := range svcs {
		s := &svcs[i]
		_, err := t.cs.CoreV1().Services(Namespace).Create(ctx, s, metav1.CreateOptions{})
		if err := created(err, "service/"+Namespace+"/"+s.Name, &changes); err != nil {
			return changes, err
		}
	}
	for i := range pods {
		p := &pods[i]
		_, err := t.cs.CoreV1().Pods(Namespace).Create(ctx, p, metav1.CreateOptions{})
		if err := created(err, "pod/"+Namespace+"/"+p.Name, &changes); err != nil {
			return changes, err
		}
	}
	return changes, nil
}

// created notes a created object; one that is already there is no change.
func created(err error, what string, changes *[]string) error {
	switch {
	case err == nil:
		*changes = append(*changes, what+" created")
	case !apierrors.IsAlreadyExists(err):
		return fmt.Errorf("create %s: %w", what, err)
	}
	return nil
}

// namespace creates the workload's namespace, first waiting out one that
// a previous run is still deleting.
func (t *clusterTarget) namespace(ctx context.Context, changes *[]string) error {
	for {
		ns, err := t.cs.CoreV1().Namespaces().Get(ctx, Namespace, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			// The host-network pods need Pod Security's privileged level
			// where a cluster enforces another by default.
			ns = &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: Namespace, Labels: map[string]string{
				"app.kubernetes.io/managed-by":       "kdive-verify",
				"pod-security.kubernetes.io/enforce": "privileged",
			}}}
			_, err = t.cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{})
			if err := created(err, "namespace/"+Namespace, changes); err != nil {
				return err
			}
			return nil
		case err != nil:
			return fmt.Errorf("namespace %s: %w", Namespace, err)
		case ns.DeletionTimestamp == nil:
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("namespace %s is still being deleted: %w", Namespace, ctx.Err())
		case <-time.After(time.Second):
		}
	}
}

// runKdive makes a workload pod run kdive's image: the host-network pods'
// probe container `kdive probe idle`, the others kdive's echo server, as
// in a Kubernetes lab (lab.EchoContainers). Every pod tolerates every
// taint: it names its node, and must stay there.
func (t *clusterTarget) runKdive(p *corev1.Pod) {
	p.Spec.Tolerations = []corev1.Toleration{{Operator: corev1.TolerationOpExists}}
	grace := int64(1)
	p.Spec.TerminationGracePeriodSeconds = &grace
	for i := range p.Spec.Containers {
		if c := &p.Spec.Containers[i]; c.Name == "probe" {
			c.Image, c.Command = t.image, []string{"kdive", "probe", "idle"}
		}
	}
	lab.EchoContainers(&p.Spec, t.image)
}

func (t *clusterTarget) podOrigin(pod *corev1.Pod) (origin, error) {
	return execOrigin{t: t, pod: pod.Name, container: pod.Spec.Containers[0].Name}, nil
}

func (t *clusterTarget) lastChange(snap *labstore.Snapshot) (time.Time, error) {
	return lab.LastObjectChange(snap, Namespace), nil
}

// remove deletes the namespace and waits until it is gone, so that the
// next run starts clean.
func (t *clusterTarget) remove(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	err := t.cs.CoreV1().Namespaces().Delete(ctx, Namespace, metav1.DeleteOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("delete namespace %s: %w", Namespace, err)
	}
	for {
		_, err := t.cs.CoreV1().Namespaces().Get(ctx, Namespace, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("namespace %s is not gone: %w", Namespace, ctx.Err())
		case <-time.After(time.Second):
		}
	}
}

// execOrigin sends from a pod of a cluster: it runs `kdive probe` there
// through the API server's exec (WebSocket, or SPDY where the server has
// no WebSocket exec), and reads its answers.
type execOrigin struct {
	t              *clusterTarget
	pod, container string
}

func (o execOrigin) probe(ctx context.Context, r ProbeRequest) []ProbeAnswer {
	count, parallel := max(r.Count, 1), max(r.Parallel, 1)
	args := []string{"kdive", "probe", "--timeout=" + r.Timeout.String(), "--count=" + strconv.Itoa(count), "--parallel=" + strconv.Itoa(parallel)}
	if r.BodySize > 0 {
		args = append(args, "--body-size="+strconv.Itoa(r.BodySize))
	}
	if r.UDPAddr != "" {
		args = append(args, "udp", r.UDPAddr)
	} else {
		args = append(args, "http", r.URL)
	}
	// Every request may take its timeout; exec itself a while more.
	rounds := (count + parallel - 1) / parallel
	ctx, cancel := context.WithTimeout(ctx, time.Duration(rounds)*r.Timeout+apiTimeout)
	defer cancel()
	out, err := o.t.exec(ctx, o.pod, o.container, args)
	if err != nil {
		return allFailed(r, fmt.Sprintf("exec in pod %s/%s: %v", Namespace, o.pod, err))
	}
	var answers []ProbeAnswer
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 0, 4*maxReply), 4*maxReply)
	for sc.Scan() {
		var a ProbeAnswer
		if err := json.Unmarshal(sc.Bytes(), &a); err != nil {
			return allFailed(r, fmt.Sprintf("kdive probe in pod %s/%s printed %q", Namespace, o.pod, sc.Text()))
		}
		answers = append(answers, a)
	}
	if len(answers) != count {
		return allFailed(r, fmt.Sprintf("kdive probe in pod %s/%s answered %d of %d requests", Namespace, o.pod, len(answers), count))
	}
	return answers
}

// exec runs a command in a pod's container and returns its output.
func (t *clusterTarget) exec(ctx context.Context, pod, container string, cmd []string) ([]byte, error) {
	req := t.cs.CoreV1().RESTClient().Post().Resource("pods").Namespace(Namespace).Name(pod).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{Container: container, Command: cmd, Stdout: true, Stderr: true}, scheme.ParameterCodec)
	spdy, err := remotecommand.NewSPDYExecutor(t.cfg, "POST", req.URL())
	if err != nil {
		return nil, err
	}
	ws, err := remotecommand.NewWebSocketExecutor(t.cfg, "GET", req.URL().String())
	if err != nil {
		return nil, err
	}
	ex, err := remotecommand.NewFallbackExecutor(ws, spdy, func(err error) bool {
		return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
	})
	if err != nil {
		return nil, err
	}
	var stdout, stderr bytes.Buffer
	err = ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: &stdout, Stderr: &stderr})
	if err != nil {
		if msg := strings.TrimSpace(stderr.String()); msg != "" {
			err = fmt.Errorf("%w: %s", err, msg)
		}
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			err = fmt.Errorf("no answer from exec: %w", err)
		}
		return nil, err
	}
	return stdout.Bytes(), nil
}
