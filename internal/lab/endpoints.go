package lab

import (
	"fmt"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/kdive/kdive/internal/source/labstore"
)

// The lab's EndpointSlice controller: slices derived from Services and
// Pods as Kubernetes' controller derives them (selector, readiness, target
// ports resolved per pod, node, zone, hints for trafficDistribution
// PreferClose), rewritten whenever the lab's control plane changes the
// store.

// maxEndpointsPerSlice splits big services over several slices, as the
// controller's default of 100 does.
const maxEndpointsPerSlice = 100

// APIServerPort is where the lab's stand-in API server answers on the first
// node; default/kubernetes points there.
const APIServerPort = 6443

const managedBy = "kdive-lab"

// reconcileSlices recomputes every EndpointSlice of the store.
func (p *Plan) reconcileSlices(s *labstore.Snapshot) {
	zones := map[string]string{}
	for _, n := range s.Nodes {
		zones[n.Name] = n.Labels[corev1.LabelTopologyZone]
	}
	old := map[string]discoveryv1.EndpointSlice{}
	for _, sl := range s.EndpointSlices {
		old[sl.Namespace+"/"+sl.Name] = sl
	}
	s.EndpointSlices = nil
	for i := range s.Services {
		svc := &s.Services[i]
		switch {
		case svc.Namespace == "default" && svc.Name == "kubernetes" && len(svc.Spec.Selector) == 0:
			s.EndpointSlices = append(s.EndpointSlices, p.apiServerSlice(svc))
		case len(svc.Spec.Selector) > 0:
			s.EndpointSlices = append(s.EndpointSlices, slicesFor(svc, s.Pods, zones)...)
		}
	}
	// Like the controller, stamp a changed slice with the time of the
	// change, from which agents measure network programming latency.
	now := time.Now().UTC().Format(time.RFC3339Nano)
	for i := range s.EndpointSlices {
		sl := &s.EndpointSlices[i]
		prev, ok := old[sl.Namespace+"/"+sl.Name]
		stamp := now
		if ok && equality.Semantic.DeepEqual(prev.Endpoints, sl.Endpoints) && equality.Semantic.DeepEqual(prev.Ports, sl.Ports) {
			stamp = prev.Annotations[corev1.EndpointsLastChangeTriggerTime]
		}
		if stamp != "" {
			sl.Annotations = map[string]string{corev1.EndpointsLastChangeTriggerTime: stamp}
		}
	}
}

// apiServerSlice points the kubernetes service at the first node, where
// the lab runs a stand-in on APIServerPort.
func (p *Plan) apiServerSlice(svc *corev1.Service) discoveryv1.EndpointSlice {
	n := p.Nodes[0]
	sl := newSlice(svc, svc.Name+"-apiserver")
	for _, sp := range svc.Spec.Ports {
		sl.Ports = append(sl.Ports, discoveryv1.EndpointPort{Name: ptr.To(sp.Name), Protocol: ptr.To(protoOrTCP(sp.Protocol)), Port: ptr.To[int32](APIServerPort)})
	}
	sl.Endpoints = []discoveryv1.Endpoint{{
		Addresses: []string{n.IP.String()}, NodeName: ptr.To(n.Name),
		Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)},
	}}
	return sl
}

func newSlice(svc *corev1.Service, name string) discoveryv1.EndpointSlice {
	return discoveryv1.EndpointSlice{
		TypeMeta: metav1.TypeMeta{APIVersion: "discovery.k8s.io/v1", Kind: "EndpointSlice"},
		ObjectMeta: metav1.ObjectMeta{
			Namespace: svc.Namespace, Name: name,
			Labels: map[string]string{discoveryv1.LabelServiceName: svc.Name, discoveryv1.LabelManagedBy: managedBy},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
	}
}

// slicesFor builds the slices of a selector service: pods that match and
// have an IP, grouped by how their target ports resolve (a named target
// port may differ per pod), at most maxEndpointsPerSlice per slice.
func slicesFor(svc *corev1.Service, pods []corev1.Pod, zones map[string]string) []discoveryv1.EndpointSlice {
	sel := labels.SelectorFromSet(svc.Spec.Selector)
	var td string
	if svc.Spec.TrafficDistribution != nil {
		td = *svc.Spec.TrafficDistribution
	}
	groups := map[string][]discoveryv1.Endpoint{}
	groupPorts := map[string][]discoveryv1.EndpointPort{}
	for i := range pods {
		pod := &pods[i]
		if pod.Namespace != svc.Namespace || !sel.Matches(labels.Set(pod.Labels)) || pod.Status.PodIP == "" {
			continue
		}
		ports, key := resolvePorts(svc, pod)
		if len(ports) == 0 {
			continue
		}
		ready := PodReady(pod)
		terminating := pod.DeletionTimestamp != nil
		ep := discoveryv1.Endpoint{
			Addresses: []string{pod.Status.PodIP},
			Conditions: discoveryv1.EndpointConditions{
				Ready: ptr.To(ready && !terminating), Serving: ptr.To(ready), Terminating: ptr.To(terminating),
			},
			NodeName:  ptr.To(pod.Spec.NodeName),
			TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID},
		}
		if z := zones[pod.Spec.NodeName]; z != "" {
			ep.Zone = ptr.To(z)
			// As the EndpointSlice controller hints them: each endpoint
			// for its own zone, and for PreferSameNode its own node too.
			switch td {
			case corev1.ServiceTrafficDistributionPreferClose, corev1.ServiceTrafficDistributionPreferSameZone:
				ep.Hints = &discoveryv1.EndpointHints{ForZones: []discoveryv1.ForZone{{Name: z}}}
			case corev1.ServiceTrafficDistributionPreferSameNode:
				ep.Hints = &discoveryv1.EndpointHints{ForZones: []discoveryv1.ForZone{{Name: z}}, ForNodes: []discoveryv1.ForNode{{Name: pod.Spec.NodeName}}}
			}
		}
		groups[key] = append(groups[key], ep)
		groupPorts[key] = ports
	}
	keys := make([]string, 0, len(groups))
	for k := range groups {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var out []discoveryv1.EndpointSlice
	for _, k := range keys {
		eps := groups[k]
		for start := 0; start < len(eps); start += maxEndpointsPerSlice {
			sl := newSlice(svc, fmt.Sprintf("%s-%d", svc.Name, len(out)))
			sl.Ports = groupPorts[k]
			sl.Endpoints = eps[start:min(start+maxEndpointsPerSlice, len(eps))]
			out = append(out, sl)
		}
	}
	return out
}

// resolvePorts maps the service's ports to the pod's: a numeric target
// port as is (the service port when unset), a named one through the pod's
// container ports. The key identifies the resolution, for grouping.
func resolvePorts(svc *corev1.Service, pod *corev1.Pod) ([]discoveryv1.EndpointPort, string) {
	var out []discoveryv1.EndpointPort
	var key []string
	for _, sp := range svc.Spec.Ports {
		port := sp.TargetPort.IntVal
		if sp.TargetPort.Type == intstr.String { // a named container port
			port = 0
			for _, c := range pod.Spec.Containers {
				for _, cp := range c.Ports {
					if cp.Name == sp.TargetPort.StrVal && protoOrTCP(cp.Protocol) == protoOrTCP(sp.Protocol) {
						port = cp.ContainerPort
					}
				}
			}
			if port == 0 {
				continue // this pod does not serve the port
			}
		} else if port == 0 {
			port = sp.Port
		}
		out = append(out, discoveryv1.EndpointPort{Name: ptr.To(sp.Name), Protocol: ptr.To(protoOrTCP(sp.Protocol)), Port: ptr.To(port)})
		key = append(key, fmt.Sprintf("%s/%d", sp.Name, port))
	}
	return out, strings.Join(key, ",")
}

// PodReady says whether the pod's Ready condition is true.
func PodReady(pod *corev1.Pod) bool {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
