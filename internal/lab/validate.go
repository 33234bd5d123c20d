package lab

import (
	"fmt"
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apivalidation "k8s.io/apimachinery/pkg/api/validation"
	metav1validation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// Validation of the objects given to a lab, as the API server does it on
// create: the rules of k8s.io/kubernetes pkg/apis/core/validation
// (ValidateService, validateContainerPorts, ...) and
// pkg/apis/apps/validation (ValidateDeploymentSpec) for the fields a lab
// uses, ported (the main module cannot import k8s.io/kubernetes) from
// v1.37 with upstream's messages, applied to a copy defaulted as the API
// server defaults it; then what the allocators check (allocate.go).
//
// Paths start at the object, as objects[Service default/web].spec...,
// so that a file with many objects says which one. One deviation: the
// source ranges are at spec.loadBalancerSourceRanges, the field's name,
// where upstream says spec.LoadBalancerSourceRanges.

// validate checks every object on its own and the addresses and ports
// they claim together, against the lab's ranges and existing, the
// services the lab already has (an object replacing one of them is an
// update and does not conflict with it).
func (o *Objects) validate(p *Plan, existing []corev1.Service, fp *field.Path) field.ErrorList {
	var errs field.ErrorList
	invalid := map[string]bool{} // services whose allocation is not checked
	for i := range o.Services {
		s := &o.Services[i]
		se := validateService(s, fp.Key("Service "+ServiceName(s)))
		invalid[ServiceName(s)] = len(se) > 0
		errs = append(errs, se...)
	}
	for i := range o.Deployments {
		d := &o.Deployments[i]
		errs = append(errs, validateDeployment(d, fp.Key("Deployment "+d.Namespace+"/"+d.Name))...)
	}
	for i := range o.Pods {
		pod := &o.Pods[i]
		kp := fp.Key("Pod " + podKey(pod))
		errs = append(errs, validateMeta(&pod.ObjectMeta, kp.Child("metadata"))...)
		errs = append(errs, validatePodSpec(&pod.Spec, kp.Child("spec"))...)
	}
	// As the API server, allocate only for a valid object: an invalid
	// value would only give a second error about the same field.
	return append(errs, o.validateAllocations(p, existing, invalid, fp)...)
}

// validateMeta checks labels and annotations; decodeObjects has checked
// the name and namespace.
func validateMeta(m interface {
	GetLabels() map[string]string
	GetAnnotations() map[string]string
}, fp *field.Path) field.ErrorList {
	errs := metav1validation.ValidateLabels(m.GetLabels(), fp.Child("labels"))
	return append(errs, apivalidation.ValidateAnnotations(m.GetAnnotations(), fp.Child("annotations"))...)
}

// defaultService is upstream's SetDefaults_Service and the create
// strategy's clusterIPs normalisation, on a copy.
func defaultService(in *corev1.Service) *corev1.Service {
	s := in.DeepCopy()
	if s.Spec.SessionAffinity == "" {
		s.Spec.SessionAffinity = corev1.ServiceAffinityNone
	}
	if s.Spec.SessionAffinity == corev1.ServiceAffinityNone {
		s.Spec.SessionAffinityConfig = nil
	}
	if s.Spec.SessionAffinity == corev1.ServiceAffinityClientIP {
		if c := s.Spec.SessionAffinityConfig; c == nil || c.ClientIP == nil || c.ClientIP.TimeoutSeconds == nil {
			t := corev1.DefaultClientIPServiceAffinitySeconds
			s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: &t}}
		}
	}
	if s.Spec.Type == "" {
		s.Spec.Type = corev1.ServiceTypeClusterIP
	}
	for i := range s.Spec.Ports {
		sp := &s.Spec.Ports[i]
		if sp.Protocol == "" {
			sp.Protocol = corev1.ProtocolTCP
		}
		if sp.TargetPort == intstr.FromInt32(0) || sp.TargetPort == intstr.FromString("") {
			sp.TargetPort = intstr.FromInt32(sp.Port)
		}
	}
	if externallyAccessible(s) && s.Spec.ExternalTrafficPolicy == "" {
		s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyCluster
	}
	if s.Spec.InternalTrafficPolicy == nil {
		p := corev1.ServiceInternalTrafficPolicyCluster
		s.Spec.InternalTrafficPolicy = &p
	}
	if s.Spec.Type == corev1.ServiceTypeLoadBalancer && s.Spec.AllocateLoadBalancerNodePorts == nil {
		t := true
		s.Spec.AllocateLoadBalancerNodePorts = &t
	}
	if s.Spec.ClusterIP != "" && len(s.Spec.ClusterIPs) == 0 {
		s.Spec.ClusterIPs = []string{s.Spec.ClusterIP}
	}
	return s
}

// externallyAccessible is upstream's service.ExternallyAccessible.
func externallyAccessible(s *corev1.Service) bool {
	return s.Spec.Type == corev1.ServiceTypeLoadBalancer || s.Spec.Type == corev1.ServiceTypeNodePort ||
		(s.Spec.Type == corev1.ServiceTypeClusterIP && len(s.Spec.ExternalIPs) > 0)
}

func isHeadless(s *corev1.Service) bool {
	return len(s.Spec.ClusterIPs) == 1 && s.Spec.ClusterIPs[0] == corev1.ClusterIPNone
}

var (
	labServiceTypes        = []string{"ClusterIP", "LoadBalancer", "NodePort"} // no ExternalName in a lab
	portProtocols          = []string{"SCTP", "TCP", "UDP"}
	affinityTypes          = []string{"ClientIP", "None"}
	trafficPolicies        = []string{"Cluster", "Local"}
	ipFamilyPolicies       = []string{"PreferDualStack", "RequireDualStack", "SingleStack"}
	trafficDistributions   = []string{"PreferClose", "PreferSameNode", "PreferSameZone"}
	maxAffinityTimeout     = int32(86400) // upstream's core.MaxClientIPServiceAffinitySeconds
	affinityTimeoutMessage = fmt.Sprintf("must be greater than 0 and less than %d", maxAffinityTimeout)
)

func oneOfValues(v string, allowed []string) bool {
	for _, a := range allowed {
		if v == a {
			return true
		}
	}
	return false
}

// validateService is upstream's ValidateServiceCreate for a lab.
func validateService(in *corev1.Service, fp *field.Path) field.ErrorList {
	s := defaultService(in)
	var errs field.ErrorList
	meta := fp.Child("metadata")
	if len(validation.IsDNS1123Subdomain(s.Name)) == 0 { // otherwise decodeObjects said so
		for _, m := range apivalidation.NameIsDNS1035Label(s.Name, false) {
			errs = append(errs, field.Invalid(meta.Child("name"), s.Name, m))
		}
	}
	errs = append(errs, validateMeta(&s.ObjectMeta, meta)...)
	spec := fp.Child("spec")
	headless := isHeadless(s)

	if !oneOfValues(string(s.Spec.Type), labServiceTypes) {
		errs = append(errs, field.NotSupported(spec.Child("type"), s.Spec.Type, labServiceTypes))
	}
	if len(s.Spec.Ports) == 0 && !headless {
		errs = append(errs, field.Required(spec.Child("ports"), ""))
	}
	if headless && (s.Spec.Type == corev1.ServiceTypeNodePort || s.Spec.Type == corev1.ServiceTypeLoadBalancer) {
		errs = append(errs, field.Invalid(spec.Child("clusterIPs").Index(0), s.Spec.ClusterIPs[0],
			fmt.Sprintf("may not be set to 'None' for %s services", s.Spec.Type)))
	}
	errs = append(errs, validateServicePorts(s, spec.Child("ports"))...)
	if s.Spec.Selector != nil {
		errs = append(errs, metav1validation.ValidateLabels(s.Spec.Selector, spec.Child("selector"))...)
	}
	errs = append(errs, validateAffinity(s, spec)...)
	errs = append(errs, validateClusterIPs(s, spec)...)
	for i, ip := range s.Spec.ExternalIPs {
		errs = append(errs, validateEndpointIP(ip, spec.Child("externalIPs").Index(i))...)
	}
	if len(s.Spec.LoadBalancerSourceRanges) > 0 {
		rp := spec.Child("loadBalancerSourceRanges")
		if s.Spec.Type != corev1.ServiceTypeLoadBalancer {
			errs = append(errs, field.Forbidden(rp, "may only be used when `type` is 'LoadBalancer'"))
		}
		for i, r := range s.Spec.LoadBalancerSourceRanges {
			errs = append(errs, validation.IsValidCIDRForLegacyField(rp.Index(i), strings.TrimSpace(r), true, nil)...)
		}
	}
	if s.Spec.AllocateLoadBalancerNodePorts != nil && s.Spec.Type != corev1.ServiceTypeLoadBalancer {
		errs = append(errs, field.Forbidden(spec.Child("allocateLoadBalancerNodePorts"), "may only be used when `type` is 'LoadBalancer'"))
	}
	errs = append(errs, validateTrafficPolicies(s, spec)...)
	errs = append(errs, validateLoadBalancerStatus(s, fp.Child("status", "loadBalancer"))...)
	return errs
}

// servicePortKey is what two ports of a service may not share.
type servicePortKey struct {
	Port     int32           `json:"port"`
	Protocol corev1.Protocol `json:"protocol"`
}

// validateServicePorts is upstream's validateServicePort for each port,
// and its checks across the ports of one service.
func validateServicePorts(s *corev1.Service, fp *field.Path) field.ErrorList {
	var errs field.ErrorList
	names := map[string]bool{}
	ports := map[servicePortKey]bool{}
	nodePorts := map[servicePortKey]bool{}
	for i := range s.Spec.Ports {
		sp := &s.Spec.Ports[i]
		pp := fp.Index(i)
		switch {
		case sp.Name == "" && len(s.Spec.Ports) > 1:
			errs = append(errs, field.Required(pp.Child("name"), ""))
		case sp.Name != "":
			for _, m := range validation.IsDNS1123Label(sp.Name) {
				errs = append(errs, field.Invalid(pp.Child("name"), sp.Name, m))
			}
			if names[sp.Name] {
				errs = append(errs, field.Duplicate(pp.Child("name"), sp.Name))
			}
			names[sp.Name] = true
		}
		for _, m := range validation.IsValidPortNum(int(sp.Port)) {
			errs = append(errs, field.Invalid(pp.Child("port"), sp.Port, m))
		}
		if !oneOfValues(string(sp.Protocol), portProtocols) {
			errs = append(errs, field.NotSupported(pp.Child("protocol"), sp.Protocol, portProtocols))
		}
		errs = append(errs, validatePortNumOrName(sp.TargetPort, pp.Child("targetPort"))...)
		if sp.AppProtocol != nil {
			for _, m := range validation.IsQualifiedName(*sp.AppProtocol) {
				errs = append(errs, field.Invalid(pp.Child("appProtocol"), *sp.AppProtocol, m))
			}
		}
		if sp.NodePort != 0 {
			if s.Spec.Type == corev1.ServiceTypeClusterIP {
				errs = append(errs, field.Forbidden(pp.Child("nodePort"), "may not be used when `type` is 'ClusterIP'"))
			}
			k := servicePortKey{sp.NodePort, sp.Protocol}
			if nodePorts[k] {
				errs = append(errs, field.Duplicate(pp.Child("nodePort"), sp.NodePort))
			}
			nodePorts[k] = true
		}
		k := servicePortKey{sp.Port, sp.Protocol}
		if ports[k] {
			errs = append(errs, field.Duplicate(pp, k))
		}
		ports[k] = true
	}
	return errs
}

// validatePortNumOrName is upstream's ValidatePortNumOrName.
func validatePortNumOrName(port intstr.IntOrString, fp *field.Path) field.ErrorList {
	var errs field.ErrorList
	if port.Type == intstr.String {
		for _, m := range validation.IsValidPortName(port.StrVal) {
			errs = append(errs, field.Invalid(fp, port.StrVal, m))
		}
		return errs
	}
	for _, m := range validation.IsValidPortNum(port.IntValue()) {
		errs = append(errs, field.Invalid(fp, port.IntValue(), m))
	}
	return errs
}

func validateAffinity(s *corev1.Service, spec *field.Path) field.ErrorList {
	var errs field.ErrorList
	if !oneOfValues(string(s.Spec.SessionAffinity), affinityTypes) {
		return append(errs, field.NotSupported(spec.Child("sessionAffinity"), s.Spec.SessionAffinity, affinityTypes))
	}
	if s.Spec.SessionAffinity != corev1.ServiceAffinityClientIP {
		return errs
	}
	// Defaulting filled in the timeout when any part was missing.
	t := s.Spec.SessionAffinityConfig.ClientIP.TimeoutSeconds
	if *t <= 0 || *t > maxAffinityTimeout {
		errs = append(errs, field.Invalid(spec.Child("sessionAffinityConfig", "clientIP", "timeoutSeconds"), *t, affinityTimeoutMessage))
	}
	return errs
}

// validateClusterIPs is upstream's ValidateServiceClusterIPsRelatedFields
// and the single-stack IPv4 checks of its allocator (a lab has only an
// IPv4 service CIDR).
func validateClusterIPs(s *corev1.Service, spec *field.Path) field.ErrorList {
	var errs field.ErrorList
	ipsPath := spec.Child("clusterIPs")
	if s.Spec.ClusterIP == "" && len(s.Spec.ClusterIPs) != 0 {
		errs = append(errs, field.Invalid(ipsPath, s.Spec.ClusterIPs, "must be empty when `clusterIP` is not specified"))
	} else if len(s.Spec.ClusterIPs) > 0 && s.Spec.ClusterIPs[0] != s.Spec.ClusterIP {
		errs = append(errs, field.Invalid(ipsPath, s.Spec.ClusterIPs, "first value must match `clusterIP`"))
	}
	for i, f := range s.Spec.IPFamilies {
		fp := spec.Child("ipFamilies").Index(i)
		switch f {
		case corev1.IPv4Protocol:
		case corev1.IPv6Protocol:
			errs = append(errs, field.Invalid(fp, f, "not configured on this cluster"))
		default:
			errs = append(errs, field.NotSupported(fp, f, []string{"IPv4", "IPv6"}))
		}
	}
	if pol := s.Spec.IPFamilyPolicy; pol != nil {
		pp := spec.Child("ipFamilyPolicy")
		switch {
		case !oneOfValues(string(*pol), ipFamilyPolicies):
			errs = append(errs, field.NotSupported(pp, *pol, ipFamilyPolicies))
		case *pol == corev1.IPFamilyPolicyRequireDualStack:
			errs = append(errs, field.Invalid(pp, *pol, "this cluster is not configured for dual-stack services"))
		}
	}
	for i, ip := range s.Spec.ClusterIPs {
		if i == 0 && ip == corev1.ClusterIPNone {
			if len(s.Spec.ClusterIPs) > 1 {
				errs = append(errs, field.Invalid(ipsPath, s.Spec.ClusterIPs, "'None' must be the first and only value"))
			}
			continue
		}
		if e := validation.IsValidIPForLegacyField(ipsPath.Index(i), ip, true, nil); len(e) > 0 {
			errs = append(errs, e...)
			continue
		}
		if a, _ := netip.ParseAddr(ip); a.Is6() {
			errs = append(errs, field.Invalid(ipsPath.Index(i), s.Spec.ClusterIPs, "IPv6 is not configured on this cluster"))
		}
	}
	if len(s.Spec.ClusterIPs) > 1 && s.Spec.ClusterIPs[0] != corev1.ClusterIPNone {
		errs = append(errs, field.Invalid(spec.Child("ipFamilyPolicy"), "SingleStack",
			"must be 'RequireDualStack' or 'PreferDualStack' when multiple cluster IPs are specified"))
	}
	return errs
}

// validateEndpointIP is upstream's check of externalIPs: a valid IP
// (IsValidIPForLegacyField, strict), then ValidateEndpointIP.
func validateEndpointIP(ip string, fp *field.Path) field.ErrorList {
	if errs := validation.IsValidIPForLegacyField(fp, ip, true, nil); len(errs) > 0 {
		return errs
	}
	a, _ := netip.ParseAddr(ip)
	var errs field.ErrorList
	if a.IsUnspecified() {
		errs = append(errs, field.Invalid(fp, ip, fmt.Sprintf("may not be unspecified (%v)", ip)))
	}
	if a.IsLoopback() {
		errs = append(errs, field.Invalid(fp, ip, "may not be in the loopback range (127.0.0.0/8, ::1/128)"))
	}
	if a.IsLinkLocalUnicast() {
		errs = append(errs, field.Invalid(fp, ip, "may not be in the link-local range (169.254.0.0/16, fe80::/10)"))
	}
	if a.IsLinkLocalMulticast() {
		errs = append(errs, field.Invalid(fp, ip, "may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)"))
	}
	return errs
}

// validateTrafficPolicies is upstream's validateServiceExternalTrafficPolicy,
// validateServiceInternalTrafficFieldsValue and
// validateServiceTrafficDistribution.
func validateTrafficPolicies(s *corev1.Service, spec *field.Path) field.ErrorList {
	var errs field.ErrorList
	etp := s.Spec.ExternalTrafficPolicy
	switch {
	case !externallyAccessible(s) && etp != "":
		errs = append(errs, field.Invalid(spec.Child("externalTrafficPolicy"), etp, "may only be set for externally-accessible services"))
	case externallyAccessible(s) && !oneOfValues(string(etp), trafficPolicies):
		errs = append(errs, field.NotSupported(spec.Child("externalTrafficPolicy"), etp, trafficPolicies))
	}
	needsHealthCheck := s.Spec.Type == corev1.ServiceTypeLoadBalancer && etp == corev1.ServiceExternalTrafficPolicyLocal
	if hc := s.Spec.HealthCheckNodePort; hc != 0 {
		hp := spec.Child("healthCheckNodePort")
		if !needsHealthCheck {
			errs = append(errs, field.Invalid(hp, hc, "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'"))
		}
		for _, m := range validation.IsValidPortNum(int(hc)) {
			errs = append(errs, field.Invalid(hp, hc, m))
		}
	}
	if itp := s.Spec.InternalTrafficPolicy; itp != nil && !oneOfValues(string(*itp), trafficPolicies) {
		errs = append(errs, field.NotSupported(spec.Child("internalTrafficPolicy"), *itp, trafficPolicies))
	}
	if td := s.Spec.TrafficDistribution; td != nil && !oneOfValues(*td, trafficDistributions) {
		errs = append(errs, field.NotSupported(spec.Child("trafficDistribution"), *td, trafficDistributions))
	}
	return errs
}

// validateLoadBalancerStatus checks the ingress IPs a lab file may give
// a LoadBalancer service (upstream's ValidateLoadBalancerStatus).
func validateLoadBalancerStatus(s *corev1.Service, fp *field.Path) field.ErrorList {
	ing := s.Status.LoadBalancer.Ingress
	ip := fp.Child("ingress")
	if len(ing) > 0 && s.Spec.Type != corev1.ServiceTypeLoadBalancer {
		return field.ErrorList{field.Forbidden(ip, "may only be used when `spec.type` is 'LoadBalancer'")}
	}
	var errs field.ErrorList
	for i, in := range ing {
		if in.IP != "" {
			errs = append(errs, validation.IsValidIPForLegacyField(ip.Index(i).Child("ip"), in.IP, true, nil)...)
		}
		if in.Hostname != "" {
			for _, m := range validation.IsDNS1123Subdomain(in.Hostname) {
				errs = append(errs, field.Invalid(ip.Index(i).Child("hostname"), in.Hostname, m))
			}
		}
	}
	return errs
}
