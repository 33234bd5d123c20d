package lab

import (
	"archive/tar"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"

	"github.com/kdive/kdive/deploy"
	"github.com/kdive/kdive/internal/agent"
	"github.com/kdive/kdive/internal/model"
)

// installKdive applies deploy/kdive.yaml as a user would, with its
// ConfigMap's agent configuration set to the lab's modes and the API
// server's address (there is no kube-proxy to make the kubernetes Service
// work before kdive runs).
func (p *Plan) installKdive(ctx context.Context, cs kubernetes.Interface) error {
	objs, err := p.kdiveManifest()
	if err != nil {
		return err
	}
	if _, err := cs.CoreV1().ServiceAccounts(objs.ServiceAccount.Namespace).Create(ctx, objs.ServiceAccount, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("kdive ServiceAccount: %w", err)
	}
	if _, err := cs.RbacV1().ClusterRoles().Create(ctx, objs.ClusterRole, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("kdive ClusterRole: %w", err)
	}
	if _, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, objs.ClusterRoleBinding, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("kdive ClusterRoleBinding: %w", err)
	}
	if _, err := cs.CoreV1().ConfigMaps(objs.ConfigMap.Namespace).Create(ctx, objs.ConfigMap, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("kdive ConfigMap: %w", err)
	}
	if _, err := cs.AppsV1().DaemonSets(objs.DaemonSet.Namespace).Create(ctx, objs.DaemonSet, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("kdive DaemonSet: %w", err)
	}
	return nil
}

// kdiveManifest is deploy/kdive.yaml configured for the lab: only the
// ConfigMap's agent.yaml changes, as a user edits it.
func (p *Plan) kdiveManifest() (*deploy.Objects, error) {
	objs, err := deploy.Decode(deploy.Manifest)
	if err != nil {
		return nil, fmt.Errorf("deploy/kdive.yaml: %w", err)
	}
	cfg, err := agent.ParseConfiguration([]byte(objs.ConfigMap.Data["agent.yaml"]))
	if err != nil {
		return nil, fmt.Errorf("deploy/kdive.yaml ConfigMap: %w", err)
	}
	cfg.ClientConnection.APIServer = p.APIServer()
	cfg.PodNetwork = model.PodNetwork{
		Interface:   model.Interface(p.PodNetwork.Interface),
		Encap:       model.Encap(p.PodNetwork.Encap),
		EncapPolicy: model.EncapPolicy(p.PodNetwork.EncapPolicy),
	}
	cfg.Proxy.Mode = p.Proxy.Mode
	cfg.Proxy.ClusterCIDR = p.PodCIDR.String()
	cfg.Proxy.IPVS.Scheduler = p.Proxy.IPVSScheduler
	b, err := yaml.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	objs.ConfigMap.Data["agent.yaml"] = string(b)
	return objs, nil
}

// KdiveImage is the image deploy/kdive.yaml runs.
func KdiveImage() (string, error) {
	objs, err := deploy.Decode(deploy.Manifest)
	if err != nil {
		return "", err
	}
	return objs.DaemonSet.Spec.Template.Spec.Containers[0].Image, nil
}

// archiveTags reads the names a docker-archive image tarball gives its
// image (manifest.json's RepoTags).
func archiveTags(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil, fmt.Errorf("%s has no manifest.json", path)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if h.Name != "manifest.json" {
			continue
		}
		var m []struct{ RepoTags []string }
		if err := json.NewDecoder(tr).Decode(&m); err != nil {
			return nil, fmt.Errorf("%s: manifest.json: %w", path, err)
		}
		var tags []string
		for _, e := range m {
			tags = append(tags, e.RepoTags...)
		}
		return tags, nil
	}
}

// imageNamed is the tag of the first imported image whose name starts
// with prefix.
func imageNamed(bins Binaries, prefix string) (string, error) {
	archives, err := imageArchives(bins)
	if err != nil {
		return "", err
	}
	for _, a := range archives {
		tags, err := archiveTags(a)
		if err != nil {
			return "", err
		}
		for _, t := range tags {
			if strings.HasPrefix(t, prefix) {
				return t, nil
			}
		}
	}
	return "", fmt.Errorf("no image %s* among %v (make kubernetes builds it)", prefix, archives)
}

// corefile serves the cluster domain only: the lab has no upstream DNS.
const corefile = `.:53 {
    errors
    health {
        lameduck 5s
    }
    ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }
    prometheus :9153
    cache 30
    loop
    reload
    loadbalance
}
`

// installCoreDNS installs CoreDNS as kubeadm does: kube-system/coredns
// with two replicas behind kube-system/kube-dns at the service range's
// tenth address.
func (p *Plan) installCoreDNS(ctx context.Context, cs kubernetes.Interface, bins Binaries) error {
	image, err := imageNamed(bins, "registry.k8s.io/coredns/coredns:")
	if err != nil {
		return err
	}
	ns := metav1.NamespaceSystem
	labels := map[string]string{"k8s-app": "kube-dns"}
	meta := func(name string) metav1.ObjectMeta {
		return metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels}
	}
	sa := &corev1.ServiceAccount{ObjectMeta: meta("coredns")}
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "system:coredns"},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"endpoints", "services", "pods", "namespaces"}, Verbs: []string{"list", "watch"}},
			{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"list", "watch"}},
		},
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "system:coredns"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "system:coredns"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: "coredns", Namespace: ns}},
	}
	cm := &corev1.ConfigMap{ObjectMeta: meta("coredns"), Data: map[string]string{"Corefile": corefile}}
	replicas := int32(2)
	dep := &appsv1.Deployment{
		ObjectMeta: meta("coredns"),
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					ServiceAccountName: "coredns",
					PriorityClassName:  "system-cluster-critical",
					DNSPolicy:          corev1.DNSDefault,
					Containers: []corev1.Container{{
						Name: "coredns", Image: image, Args: []string{"-conf", "/etc/coredns/Corefile"},
						Ports: []corev1.ContainerPort{
							{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP},
							{Name: "dns-tcp", ContainerPort: 53, Protocol: corev1.ProtocolTCP},
							{Name: "metrics", ContainerPort: 9153, Protocol: corev1.ProtocolTCP},
						},
						Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
							corev1.ResourceCPU: resource.MustParse("50m"), corev1.ResourceMemory: resource.MustParse("32Mi"),
						}},
						ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/ready", Port: intstr.FromInt32(8181)}}, PeriodSeconds: 2},
						LivenessProbe:  &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/health", Port: intstr.FromInt32(8080)}}, PeriodSeconds: 10, FailureThreshold: 5},
						SecurityContext: &corev1.SecurityContext{
							Capabilities: &corev1.Capabilities{Add: []corev1.Capability{"NET_BIND_SERVICE"}, Drop: []corev1.Capability{"ALL"}},
						},
						VolumeMounts: []corev1.VolumeMount{{Name: "config", MountPath: "/etc/coredns", ReadOnly: true}},
					}},
					Volumes: []corev1.Volume{{Name: "config", VolumeSource: corev1.VolumeSource{
						ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "coredns"}},
					}}},
				},
			},
		},
	}
	svc := &corev1.Service{
		ObjectMeta: meta("kube-dns"),
		Spec: corev1.ServiceSpec{
			ClusterIP: p.cluster().DNSServiceIP().String(),
			Selector:  labels,
			Ports: []corev1.ServicePort{
				{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP, TargetPort: intstr.FromInt32(53)},
				{Name: "dns-tcp", Port: 53, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(53)},
				{Name: "metrics", Port: 9153, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(9153)},
			},
		},
	}
	steps := []struct {
		what string
		fn   func() error
	}{
		{"ServiceAccount", func() error {
			_, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, sa, metav1.CreateOptions{})
			return err
		}},
		{"ClusterRole", func() error {
			_, err := cs.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{})
			return err
		}},
		{"ClusterRoleBinding", func() error {
			_, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{})
			return err
		}},
		{"ConfigMap", func() error { _, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{}); return err }},
		{"Service", func() error { _, err := cs.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); return err }},
		{"Deployment", func() error {
			_, err := cs.AppsV1().Deployments(ns).Create(ctx, dep, metav1.CreateOptions{})
			return err
		}},
	}
	for _, s := range steps {
		if err := s.fn(); err != nil {
			return fmt.Errorf("CoreDNS %s: %w", s.what, err)
		}
	}
	return nil
}

// EchoImage is the image name lab files give pods that run kdive's echo
// server; a Kubernetes lab runs them from kdive's image.
const EchoImage = "kdive-echo"

// kubeObjects are the lab file's objects as a Kubernetes lab creates
// them: as written, without what a plain lab's stand-ins allocate, except
// that the objects the real cluster owns are left out (default/kubernetes,
// and kube-system/kube-dns with its coredns Deployment, which CoreDNS
// replaces) and containers of image kdive-echo run `kdive echo` from
// kdive's image, on their container ports.
func (p *Plan) kubeObjects(labFile string) (*Objects, error) {
	f, err := Parse([]byte(labFile))
	if err != nil {
		return nil, err
	}
	objs, errs := decodeObjects(f.Spec.Objects, field.NewPath("spec", "objects"))
	if len(errs) > 0 {
		return nil, &InvalidError{Lab: p.Name, Errs: errs}
	}
	image, err := KdiveImage()
	if err != nil {
		return nil, err
	}
	owned := map[string]bool{"default/kubernetes": true, "kube-system/kube-dns": true, "kube-system/coredns": true}
	out := &Objects{}
	for _, s := range objs.Services {
		if !owned[ServiceName(&s)] {
			out.Services = append(out.Services, s)
		}
	}
	for _, d := range objs.Deployments {
		if !owned[d.Namespace+"/"+d.Name] {
			EchoContainers(&d.Spec.Template.Spec, image)
			out.Deployments = append(out.Deployments, d)
		}
	}
	for _, pod := range objs.Pods {
		EchoContainers(&pod.Spec, image)
		out.Pods = append(out.Pods, pod)
	}
	return out, nil
}

// EchoContainers makes every kdive-echo container of spec run kdive's echo
// server from image, on its container ports, with its identity from the
// downward API, ready once it answers.
func EchoContainers(spec *corev1.PodSpec, image string) {
	for i := range spec.Containers {
		c := &spec.Containers[i]
		if c.Image != EchoImage {
			continue
		}
		c.Image = image
		c.Command = []string{"kdive", "echo"}
		for _, l := range podListens(&corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{*c}}}) {
			c.Args = append(c.Args, "--listen="+l)
		}
		fieldEnv := func(name, path string) corev1.EnvVar {
			return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: path}}}
		}
		c.Env = append(c.Env,
			fieldEnv("POD_NAME", "metadata.name"), fieldEnv("POD_NAMESPACE", "metadata.namespace"),
			fieldEnv("NODE_NAME", "spec.nodeName"), fieldEnv("POD_IP", "status.podIP"))
		// Ready means the server answers, as a plain lab's pod is
		// attached only once it listens.
		if c.ReadinessProbe == nil {
			if port, ok := firstTCPPort(c); ok {
				c.ReadinessProbe = &corev1.Probe{
					ProbeHandler:  corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(port)}},
					PeriodSeconds: 1,
				}
			}
		}
	}
}

func (o *Objects) namespaces() []string {
	var out []string
	for _, s := range o.Services {
		out = append(out, s.Namespace)
	}
	for _, d := range o.Deployments {
		out = append(out, d.Namespace)
	}
	for _, p := range o.Pods {
		out = append(out, p.Namespace)
	}
	return out
}

// firstTCPPort is the port the echo server listens on first for TCP.
func firstTCPPort(c *corev1.Container) (int32, bool) {
	for _, l := range podListens(&corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{*c}}}) {
		if port, ok := strings.CutPrefix(l, "tcp:"); ok {
			n, err := strconv.Atoi(port)
			return int32(n), err == nil
		}
	}
	return 0, false
}
