package lab

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// Objects are the Kubernetes objects of a lab after the work the control
// plane would do: Deployments expanded into Pods, Pods scheduled to nodes,
// Services given cluster IPs and node ports.
type Objects struct {
	Deployments []appsv1.Deployment `json:"deployments,omitempty"`
	Pods        []corev1.Pod        `json:"pods,omitempty"`
	Services    []corev1.Service    `json:"services,omitempty"`
}

// NodePort range, as the API server's default --service-node-port-range.
const (
	nodePortMin = 30000
	nodePortMax = 32767
)

type typeMeta struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
}

func planObjects(raw []json.RawMessage, p *Plan, fp *field.Path) (Objects, field.ErrorList) {
	if errs := p.validatePlan(); len(errs) > 0 { // the plan's checks that need every range
		return Objects{}, errs
	}
	objs, errs := decodeObjects(raw, fp)
	if len(errs) > 0 {
		return objs, errs
	}
	if errs := objs.validate(p, nil, fp); len(errs) > 0 {
		return objs, errs
	}
	errs = append(errs, objs.expandDeployments(fp)...)
	errs = append(errs, objs.schedule(p, fp)...)
	errs = append(errs, objs.allocateServices(p, fp, nil)...)
	return objs, errs
}

// decodeObjects decodes and checks each object on its own: known kind,
// strict fields, names, no duplicates.
func decodeObjects(raw []json.RawMessage, fp *field.Path) (Objects, field.ErrorList) {
	var (
		objs Objects
		errs field.ErrorList
		seen = map[string]*field.Path{}
	)
	for i, r := range raw {
		ip := fp.Index(i)
		var tm typeMeta
		if err := json.Unmarshal(r, &tm); err != nil {
			errs = append(errs, field.Invalid(ip, string(r), "not a Kubernetes object: "+err.Error()))
			continue
		}
		var meta *metav1.ObjectMeta
		switch {
		case tm.Kind == "Pod" && tm.APIVersion == "v1":
			var o corev1.Pod
			if !decodeStrict(r, &o, ip, &errs) {
				continue
			}
			objs.Pods = append(objs.Pods, o)
			meta = &objs.Pods[len(objs.Pods)-1].ObjectMeta
		case tm.Kind == "Deployment" && tm.APIVersion == "apps/v1":
			var o appsv1.Deployment
			if !decodeStrict(r, &o, ip, &errs) {
				continue
			}
			objs.Deployments = append(objs.Deployments, o)
			meta = &objs.Deployments[len(objs.Deployments)-1].ObjectMeta
		case tm.Kind == "Service" && tm.APIVersion == "v1":
			var o corev1.Service
			if !decodeStrict(r, &o, ip, &errs) {
				continue
			}
			objs.Services = append(objs.Services, o)
			meta = &objs.Services[len(objs.Services)-1].ObjectMeta
		default:
			errs = append(errs, field.NotSupported(ip.Child("kind"), tm.APIVersion+"/"+tm.Kind,
				[]string{"v1/Pod", "apps/v1/Deployment", "v1/Service"}))
			continue
		}
		if meta.Namespace == "" {
			meta.Namespace = "default"
		}
		for _, m := range validation.IsDNS1123Label(meta.Namespace) {
			errs = append(errs, field.Invalid(ip.Child("metadata", "namespace"), meta.Namespace, m))
		}
		if meta.Name == "" {
			errs = append(errs, field.Required(ip.Child("metadata", "name"), ""))
		}
		for _, m := range validation.IsDNS1123Subdomain(meta.Name) {
			errs = append(errs, field.Invalid(ip.Child("metadata", "name"), meta.Name, m))
		}
		key := tm.Kind + " " + meta.Namespace + "/" + meta.Name
		if prev, dup := seen[key]; dup {
			errs = append(errs, field.Duplicate(ip.Child("metadata", "name"), fmt.Sprintf("%s (also %s)", key, prev)))
		}
		seen[key] = ip
	}
	return objs, errs
}

func decodeStrict(raw json.RawMessage, into any, fp *field.Path, errs *field.ErrorList) bool {
	if err := unmarshalStrictJSON(raw, into); err != nil {
		*errs = append(*errs, field.Invalid(fp, "", err.Error()))
		return false
	}
	return true
}

// expandDeployments turns each Deployment into its Pods, named
// <deployment>-<ordinal> so names are stable across lab runs.
func (o *Objects) expandDeployments(fp *field.Path) field.ErrorList {
	var errs field.ErrorList
	for _, d := range o.Deployments {
		replicas := int32(1)
		if d.Spec.Replicas != nil {
			replicas = *d.Spec.Replicas
		}
		if replicas < 0 || replicas > 100 {
			errs = append(errs, field.Invalid(fp.Key("Deployment "+d.Namespace+"/"+d.Name).Child("spec", "replicas"), replicas, "must be between 0 and 100 in a lab"))
			continue
		}
		for i := range int(replicas) {
			pod := corev1.Pod{
				TypeMeta:   metaPod,
				ObjectMeta: *d.Spec.Template.ObjectMeta.DeepCopy(),
				Spec:       *d.Spec.Template.Spec.DeepCopy(),
			}
			pod.Name = fmt.Sprintf("%s-%d", d.Name, i)
			pod.Namespace = d.Namespace
			pod.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "Deployment", Name: d.Name}}
			o.Pods = append(o.Pods, pod)
		}
	}
	return errs
}

var metaPod = metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"}

// schedule places pods without spec.nodeName on the nodes matching their
// nodeSelector (all nodes when it has none): a Deployment's replicas
// round-robin from the first matching node, like a scheduler spreading
// them; bare pods round-robin too. Pods naming a node are checked.
func (o *Objects) schedule(p *Plan, fp *field.Path) field.ErrorList {
	var errs field.ErrorList
	next := map[string]int{} // by owner
	for i := range o.Pods {
		pod := &o.Pods[i]
		pp := fp.Key("Pod " + pod.Namespace + "/" + pod.Name).Child("spec")
		if pod.Spec.NodeName != "" {
			if _, ok := p.Node(pod.Spec.NodeName); !ok {
				errs = append(errs, field.NotFound(pp.Child("nodeName"), pod.Spec.NodeName))
			}
			continue
		}
		var fits []string
		for _, n := range p.Nodes {
			if matchesSelector(n, pod.Spec.NodeSelector) {
				fits = append(fits, n.Name)
			}
		}
		if len(fits) == 0 {
			errs = append(errs, field.Invalid(pp.Child("nodeSelector"), pod.Spec.NodeSelector, "no node of the lab matches"))
			continue
		}
		owner := ""
		if len(pod.OwnerReferences) > 0 {
			owner = pod.OwnerReferences[0].Kind + "/" + pod.OwnerReferences[0].Name
		}
		pod.Spec.NodeName = fits[next[owner]%len(fits)]
		next[owner]++
	}
	return errs
}

// NodeLabels are the labels a lab node carries: its own, plus the ones
// the kubelet sets.
func (n NodePlan) NodeLabels() map[string]string {
	l := map[string]string{"kubernetes.io/hostname": n.Name, "kubernetes.io/os": "linux"}
	for k, v := range n.Labels {
		l[k] = v
	}
	return l
}

func matchesSelector(n NodePlan, sel map[string]string) bool {
	l := n.NodeLabels()
	for k, v := range sel {
		if l[k] != v {
			return false
		}
	}
	return true
}

// allocateServices checks and assigns cluster IPs (from the service CIDR,
// lowest free first) and node ports (30000-32767, lowest free first).
func (o *Objects) allocateServices(p *Plan, fp *field.Path, existing []corev1.Service) field.ErrorList {
	var errs field.ErrorList
	usedIP := map[netip.Addr]string{}
	usedPort := map[int32]string{}
	for _, s := range existing {
		if a, err := netip.ParseAddr(s.Spec.ClusterIP); err == nil {
			usedIP[a] = ServiceName(&s)
		}
		for _, pt := range s.Spec.Ports {
			if pt.NodePort != 0 {
				usedPort[pt.NodePort] = ServiceName(&s)
			}
		}
	}
	// Honour explicit values first, so allocation never takes them.
	for i := range o.Services {
		s := &o.Services[i]
		sp := fp.Key("Service " + s.Namespace + "/" + s.Name).Child("spec")
		if s.Spec.Type == "" {
			s.Spec.Type = corev1.ServiceTypeClusterIP
		}
		switch s.Spec.Type {
		case corev1.ServiceTypeClusterIP, corev1.ServiceTypeNodePort, corev1.ServiceTypeLoadBalancer:
		default:
			errs = append(errs, field.NotSupported(sp.Child("type"), string(s.Spec.Type), []string{"ClusterIP", "NodePort", "LoadBalancer"}))
		}
		if len(s.Spec.Ports) == 0 {
			errs = append(errs, field.Required(sp.Child("ports"), ""))
		}
		for j := range s.Spec.Ports {
			pt := &s.Spec.Ports[j]
			pp := sp.Child("ports").Index(j)
			if pt.Protocol == "" {
				pt.Protocol = corev1.ProtocolTCP
			}
			if pt.Protocol != corev1.ProtocolTCP && pt.Protocol != corev1.ProtocolUDP && pt.Protocol != corev1.ProtocolSCTP {
				errs = append(errs, field.NotSupported(pp.Child("protocol"), string(pt.Protocol), []string{"TCP", "UDP", "SCTP"}))
			}
			if pt.Port < 1 || pt.Port > 65535 {
				errs = append(errs, field.Invalid(pp.Child("port"), pt.Port, "must be between 1 and 65535"))
			}
			if pt.NodePort != 0 {
				if pt.NodePort < nodePortMin || pt.NodePort > nodePortMax {
					errs = append(errs, field.Invalid(pp.Child("nodePort"), pt.NodePort, fmt.Sprintf("must be in %d-%d", nodePortMin, nodePortMax)))
				} else if other, ok := usedPort[pt.NodePort]; ok && other != ServiceName(s) {
					errs = append(errs, field.Duplicate(pp.Child("nodePort"), fmt.Sprintf("%d (also %s)", pt.NodePort, other)))
				}
				usedPort[pt.NodePort] = s.Namespace + "/" + s.Name
			}
		}
		if s.Spec.ClusterIP == "" || s.Spec.ClusterIP == corev1.ClusterIPNone {
			continue
		}
		a, err := netip.ParseAddr(s.Spec.ClusterIP)
		switch {
		case err != nil || !a.Is4():
			errs = append(errs, field.Invalid(sp.Child("clusterIP"), s.Spec.ClusterIP, "must be an IPv4 address or None"))
		case !p.ServiceCIDR.Contains(a) || a == p.ServiceCIDR.Addr() || a == lastAddr(p.ServiceCIDR):
			errs = append(errs, field.Invalid(sp.Child("clusterIP"), s.Spec.ClusterIP, fmt.Sprintf("is not a usable address of the service CIDR %s", p.ServiceCIDR)))
		default:
			if other, ok := usedIP[a]; ok && other != ServiceName(s) {
				errs = append(errs, field.Duplicate(sp.Child("clusterIP"), fmt.Sprintf("%s (also %s)", a, other)))
			}
			usedIP[a] = s.Namespace + "/" + s.Name
		}
	}
	if len(errs) > 0 {
		return errs
	}
	nextIP := p.ServiceCIDR.Addr().Next()
	nextPort := int32(nodePortMin)
	usedLB := map[netip.Addr]bool{}
	for _, s := range append(append([]corev1.Service{}, existing...), o.Services...) {
		for _, ing := range s.Status.LoadBalancer.Ingress {
			if a, err := netip.ParseAddr(ing.IP); err == nil {
				usedLB[a] = true
			}
		}
		if s.Spec.HealthCheckNodePort != 0 {
			usedPort[s.Spec.HealthCheckNodePort] = ServiceName(&s)
		}
	}
	for i := range o.Services {
		s := &o.Services[i]
		if s.Spec.ClusterIP == "" {
			for usedIP[nextIP] != "" {
				nextIP = nextIP.Next()
			}
			if !p.ServiceCIDR.Contains(nextIP.Next()) {
				return append(errs, field.Invalid(fp, len(o.Services), "service CIDR "+p.ServiceCIDR.String()+" is full"))
			}
			s.Spec.ClusterIP = nextIP.String()
			usedIP[nextIP] = s.Name
		}
		if s.Spec.ClusterIP != corev1.ClusterIPNone {
			s.Spec.ClusterIPs = []string{s.Spec.ClusterIP}
		}
		if s.Spec.Type == corev1.ServiceTypeClusterIP {
			continue
		}
		if s.Spec.Type == corev1.ServiceTypeLoadBalancer && len(s.Status.LoadBalancer.Ingress) == 0 {
			a, ok := nextLBIP(p.LoadBalancerCIDR, usedLB)
			if !ok {
				return append(errs, field.Invalid(fp, len(o.Services), "load balancer pool "+p.LoadBalancerCIDR.String()+" is full"))
			}
			usedLB[a] = true
			s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: a.String()}}
		}
		if s.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal && s.Spec.HealthCheckNodePort == 0 {
			for usedPort[nextPort] != "" {
				nextPort++
			}
			if nextPort > nodePortMax {
				return append(errs, field.Invalid(fp, len(o.Services), "node port range is full"))
			}
			s.Spec.HealthCheckNodePort = nextPort
			usedPort[nextPort] = s.Name
		}
		for j := range s.Spec.Ports {
			pt := &s.Spec.Ports[j]
			if pt.NodePort != 0 {
				continue
			}
			for usedPort[nextPort] != "" {
				nextPort++
			}
			if nextPort > nodePortMax {
				return append(errs, field.Invalid(fp, len(o.Services), "node port range is full"))
			}
			pt.NodePort = nextPort
			usedPort[nextPort] = s.Name
		}
	}
	return errs
}

// nextLBIP is the lowest free address of the pool (not the network's).
func nextLBIP(pool netip.Prefix, used map[netip.Addr]bool) (netip.Addr, bool) {
	for a := pool.Addr().Next(); pool.Contains(a) && a != lastAddr(pool); a = a.Next() {
		if !used[a] {
			return a, true
		}
	}
	return netip.Addr{}, false
}

// ServiceName is "namespace/name".
func ServiceName(s *corev1.Service) string { return s.Namespace + "/" + s.Name }

// podKey is how lab exec and status name a pod.
func podKey(p *corev1.Pod) string { return strings.Join([]string{p.Namespace, p.Name}, "/") }
