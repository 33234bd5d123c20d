package lab

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/kdive/kdive/internal/proxy/modes"
)

// APIVersion and Kind identify a lab file.
const (
	APIVersion = "kdive.dev/v1alpha1"
	Kind       = "Lab"
)

// File is a lab file: the whole description of a lab. Presets are lab files.
type File struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Metadata   Metadata `json:"metadata,omitempty"`
	Spec       Spec     `json:"spec"`
}

// Metadata names the lab file. Name is the default lab name and, for the
// embedded presets, the preset's name.
type Metadata struct {
	Name        string `json:"name,omitempty"`
	Description string `json:"description,omitempty"`
}

// Spec is the desired lab.
type Spec struct {
	// PodCIDR is the cluster pod range, cut into one block per node.
	PodCIDR string `json:"podCIDR"`
	// BlockSize is the prefix length of each node's pod block (e.g. 24).
	BlockSize int `json:"blockSize"`
	// ServiceCIDR is the range Service cluster IPs come from.
	ServiceCIDR string     `json:"serviceCIDR"`
	PodNetwork  PodNetwork `json:"podNetwork"`
	Proxy       Proxy      `json:"proxy"`
	// MTU of the underlay links; default 1500.
	MTU      int      `json:"mtu,omitempty"`
	Subnets  []Subnet `json:"subnets"`
	Nodes    []Node   `json:"nodes"`
	External External `json:"external,omitempty"`
	// LoadBalancerCIDR is the pool LoadBalancer services get their
	// ingress IPs from; the router forwards them to the nodes. Default
	// 203.0.113.0/24.
	LoadBalancerCIDR string `json:"loadBalancerCIDR,omitempty"`
	// Objects are Kubernetes objects (Pod, Deployment, Service) the lab
	// starts with, as they would be given to `kubectl apply`.
	Objects []json.RawMessage `json:"objects,omitempty"`
	// Kubernetes, when set, makes the lab a real Kubernetes cluster: a
	// control plane, containerd and a kubelet on every node, kdive
	// installed by its manifest (see kubernetes.go).
	Kubernetes *Kubernetes `json:"kubernetes,omitempty"`
}

// Kubernetes configures a Kubernetes lab.
type Kubernetes struct {
	// Version of the Kubernetes binaries; default DefaultKubernetesVersion,
	// the only one make kubernetes builds.
	Version string `json:"version,omitempty"`
}

// PodNetwork chooses how pods are attached and how pod traffic crosses
// nodes.
type PodNetwork struct {
	// Interface is routed or bridge (kdive's pod network), or none: in a
	// Kubernetes lab, the cloud's pod network (the CNI reference plugins,
	// pod blocks routed by the router) with kdive as the service proxy
	// only. Encap and EncapPolicy do not apply to none.
	Interface   string `json:"interface"`   // routed | bridge | none
	Encap       string `json:"encap"`       // none | ipip | vxlan
	EncapPolicy string `json:"encapPolicy"` // always | cross-subnet
}

// Proxy chooses the service proxy mode.
type Proxy struct {
	Mode          string `json:"mode"`                    // nftables | iptables | ipvs
	IPVSScheduler string `json:"ipvsScheduler,omitempty"` // ipvs only; default rr
}

// Subnet is one L2 segment of the underlay.
type Subnet struct {
	Name string `json:"name"`
	CIDR string `json:"cidr"`
}

// Node is one lab node.
type Node struct {
	Name   string `json:"name"`
	Subnet string `json:"subnet"`
	// IP in its subnet; default: the subnet's 10th address onwards, in
	// node order.
	IP     string            `json:"ip,omitempty"`
	Labels map[string]string `json:"labels,omitempty"`
}

// External is the client namespace behind the router, standing for a
// host outside the cluster.
type External struct {
	CIDR string `json:"cidr,omitempty"` // default 198.51.100.0/24
	IP   string `json:"ip,omitempty"`   // default the CIDR's 10th address
}

// Values the lab understands.
var (
	Interfaces    = []string{"routed", "bridge", InterfaceNone}
	Encaps        = []string{"none", "ipip", "vxlan"}
	EncapPolicies = []string{"always", "cross-subnet"}
	ProxyModes    = modes.Names()
	// IPVSSchedulers are the schedulers kube-proxy's IPVS mode offers.
	IPVSSchedulers = []string{"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "sh", "dh", "sed", "nq", "mh"}
)

// Parse decodes a lab file strictly: unknown fields are errors, so a typo
// never silently falls back to a default. It does not validate; see
// Validate.
func Parse(data []byte) (*File, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, fmt.Errorf("lab file is empty")
	}
	j, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, fmt.Errorf("lab file: %w", err)
	}
	var f File
	if err := unmarshalStrictJSON(j, &f); err != nil {
		return nil, fmt.Errorf("lab file: %w", err)
	}
	return &f, nil
}

// unmarshalStrictJSON decodes like the API server does: unknown and
// duplicate fields are errors that name the field's full path.
func unmarshalStrictJSON(data []byte, into any) error {
	strictErrs, err := kjson.UnmarshalStrict(data, into)
	if err != nil {
		return err
	}
	if len(strictErrs) > 0 {
		return errors.Join(strictErrs...)
	}
	return nil
}

// Marshal renders a lab file as YAML.
func (f *File) Marshal() ([]byte, error) { return yaml.Marshal(f) }
