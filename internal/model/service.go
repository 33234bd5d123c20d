package model

import (
	"cmp"
	"fmt"
	"net/netip"
)

// Protocol is a service port's transport protocol.
type Protocol string

const (
	ProtocolTCP  Protocol = "TCP"
	ProtocolUDP  Protocol = "UDP"
	ProtocolSCTP Protocol = "SCTP"
)

// ServicePortName names one port of a service: "namespace/name:port" (the
// port's name; empty for a service's single unnamed port).
type ServicePortName struct {
	Namespace string   `json:"namespace"`
	Name      string   `json:"name"`
	Port      string   `json:"port"`
	Protocol  Protocol `json:"protocol"`
}

// String is "namespace/name:port", or "namespace/name" for an unnamed port,
// as kube-proxy prints it.
// Compare orders service ports canonically: by namespace, name, port
// name, then protocol. proxy.Desired.Services are in this order.
func (n ServicePortName) Compare(o ServicePortName) int {
	return cmp.Or(cmp.Compare(n.Namespace, o.Namespace), cmp.Compare(n.Name, o.Name),
		cmp.Compare(n.Port, o.Port), cmp.Compare(n.Protocol, o.Protocol))
}

func (n ServicePortName) String() string {
	if n.Port == "" {
		return n.Namespace + "/" + n.Name
	}
	return fmt.Sprintf("%s/%s:%s", n.Namespace, n.Name, n.Port)
}

// Endpoint is one backend of a service port, merged from EndpointSlices.
type Endpoint struct {
	IP   netip.Addr `json:"ip"`
	Port int        `json:"port"`
	// NodeName and Zone say where it runs.
	NodeName string `json:"nodeName,omitempty"`
	Zone     string `json:"zone,omitempty"`
	// Conditions as in discovery/v1: Ready implies Serving; a terminating
	// endpoint can still be Serving.
	Ready       bool `json:"ready"`
	Serving     bool `json:"serving"`
	Terminating bool `json:"terminating"`
	// ZoneHints are the zones the EndpointSlice controller hinted this
	// endpoint for (topology aware routing, trafficDistribution).
	ZoneHints []string `json:"zoneHints,omitempty"`
	// NodeHints are the nodes it was hinted for (trafficDistribution
	// PreferSameNode).
	NodeHints []string `json:"nodeHints,omitempty"`
	// Pod is "namespace/name" of the pod behind it, when known.
	Pod string `json:"pod,omitempty"`
}

// AddrPort is "ip:port".
func (e Endpoint) AddrPort() netip.AddrPort { return netip.AddrPortFrom(e.IP, uint16(e.Port)) }

// String is "ip:port".
func (e Endpoint) String() string { return e.AddrPort().String() }

// ServicePort is one port of a service with everything that decides how
// traffic to it is handled, and all its endpoints.
type ServicePort struct {
	Name ServicePortName `json:"name"`
	// ClusterIPs are the service's cluster IPs (IPv4 only today).
	ClusterIPs []netip.Addr `json:"clusterIPs"`
	Port       int          `json:"port"`
	// NodePort is 0 when the service has none.
	NodePort                 int            `json:"nodePort,omitempty"`
	ExternalIPs              []netip.Addr   `json:"externalIPs,omitempty"`
	LoadBalancerIPs          []netip.Addr   `json:"loadBalancerIPs,omitempty"`
	LoadBalancerSourceRanges []netip.Prefix `json:"loadBalancerSourceRanges,omitempty"`
	// AffinityTimeout is sessionAffinity ClientIP's timeout in seconds;
	// 0 means no affinity.
	AffinityTimeout int `json:"affinityTimeout,omitempty"`
	// ExternalPolicyLocal is externalTrafficPolicy: Local (it applies to
	// NodePorts, externalIPs and LoadBalancer IPs).
	ExternalPolicyLocal bool `json:"externalPolicyLocal,omitempty"`
	// InternalPolicyLocal is internalTrafficPolicy: Local (cluster IPs).
	InternalPolicyLocal bool `json:"internalPolicyLocal,omitempty"`
	// HealthCheckNodePort is served for externalTrafficPolicy: Local.
	HealthCheckNodePort int `json:"healthCheckNodePort,omitempty"`
	// PreferClose is trafficDistribution: PreferClose.
	PreferClose bool `json:"preferClose,omitempty"`
	// IPVSScheduler overrides the node's IPVS scheduler for this service
	// (annotation kdive.dev/ipvs-scheduler); empty means the node's.
	IPVSScheduler string `json:"ipvsScheduler,omitempty"`
	// Endpoints are all endpoints of the port, in a stable order.
	Endpoints []Endpoint `json:"endpoints"`
}
