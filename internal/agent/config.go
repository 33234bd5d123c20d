package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy/modes"
)

// APIVersion and Kind identify an agent configuration file.
const (
	APIVersion = "kdive.dev/v1alpha1"
	Kind       = "AgentConfiguration"
)

// Configuration is the agent's configuration file (kind:
// AgentConfiguration). Flags override the common fields.
type Configuration struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	// NodeName is this node's name; default $NODE_NAME, else the hostname.
	NodeName         string           `json:"nodeName,omitempty"`
	ClientConnection ClientConnection `json:"clientConnection,omitempty"`
	// PodNetwork is how pods attach and cross nodes; interface "none"
	// leaves pods to another CNI and makes kdive the service proxy only:
	// it writes no CNI config, programs no route, and needs neither the
	// Node's spec.podCIDR nor its peers, only its InternalIP.
	PodNetwork model.PodNetwork `json:"podNetwork"`
	// NATOutgoing masquerades traffic from this node's pods to addresses
	// outside every pod block (Calico's natOutgoing): needed where the
	// underlay routes only host addresses, as a cloud VPC does, for pods
	// to reach the API server on a control-plane host or anything outside
	// the cluster. Traffic between pods keeps its source.
	NATOutgoing bool `json:"natOutgoing,omitempty"`
	// Uplink is the interface pod traffic leaves by; default the one
	// holding the node's InternalIP.
	Uplink string `json:"uplink,omitempty"`
	// MTU of pods; default the uplink's MTU minus the encapsulation
	// overhead (IPIP 20, VXLAN 50).
	MTU int       `json:"mtu,omitempty"`
	CNI CNIConfig `json:"cni,omitempty"`
	// HealthzBindAddress serves /healthz and /livez; default 0.0.0.0:10256
	// (kube-proxy's); "0" turns it off.
	HealthzBindAddress string `json:"healthzBindAddress,omitempty"`
	// MetricsBindAddress serves Prometheus /metrics; default
	// 127.0.0.1:10249 (kube-proxy's); "0" turns it off.
	MetricsBindAddress string `json:"metricsBindAddress,omitempty"`
	// Proxy configures the service proxy.
	Proxy ProxyConfig `json:"proxy,omitempty"`
	// SyncPeriod is how often the agent re-applies everything, repairing
	// what someone changed by hand; default 30s.
	SyncPeriod metav1.Duration `json:"syncPeriod,omitempty"`
	// MinSyncPeriod is the least time between two syncs, so bursts of
	// changes coalesce; default 100ms.
	MinSyncPeriod metav1.Duration `json:"minSyncPeriod,omitempty"`
	// SysctlDir stands for /proc/sys when the agent writes the node's
	// network sysctls (every one it writes is under net/); default
	// /proc/sys. A container that is not privileged sees /proc/sys
	// read-only: deploy/kdive.yaml mounts the node's /proc/sys/net at
	// /host/proc/sys/net and sets /host/proc/sys (Cilium's --procfs).
	SysctlDir string `json:"sysctlDir,omitempty"`
}

// ClientConnection says where Kubernetes objects come from.
type ClientConnection struct {
	// Kubeconfig is a kubeconfig file for a real API server.
	Kubeconfig string `json:"kubeconfig,omitempty"`
	// LabStore is a lab's store directory: the agent reads the lab's
	// objects from it through the same informers.
	LabStore string `json:"labStore,omitempty"`
	// APIServer is the API server's URL (https://HOST:PORT) for the
	// in-cluster configuration, instead of the kubernetes Service's
	// cluster IP from $KUBERNETES_SERVICE_HOST: on a cluster where kdive
	// is the service proxy, that cluster IP works only once kdive runs.
	// (Cilium's k8sServiceHost, Calico's KUBERNETES_SERVICE_HOST.)
	APIServer string `json:"apiServer,omitempty"`
}

// CNIConfig says where the agent writes the node's CNI network config
// and where the plugin keeps its IPAM state.
type CNIConfig struct {
	// ConfDir gets 10-kdive.conflist; default /etc/cni/net.d.
	ConfDir string `json:"confDir,omitempty"`
	// DataDir holds the plugin's IPAM store; default /var/lib/cni/kdive.
	DataDir string `json:"dataDir,omitempty"`
}

// ProxyConfig configures the service proxy (kube-proxy's settings of the
// same names).
type ProxyConfig struct {
	// Mode is nftables (default), iptables, or none (no service proxy:
	// only the pod network, e.g. beside kube-proxy).
	Mode string `json:"mode,omitempty"`
	// ClusterCIDR is the cluster's pod range; traffic to cluster IPs from
	// outside it is masqueraded. Default: this node's pod CIDR
	// (kube-proxy's NodeCIDR local-traffic detector); with no pod network
	// and a Node without one, none: only the node's own traffic is
	// masqueraded (kube-proxy's behaviour with no detector).
	ClusterCIDR string `json:"clusterCIDR,omitempty"`
	// NodePortAddresses restricts NodePorts, and the health check node
	// ports of externalTrafficPolicy: Local services, to node addresses
	// within these CIDRs; empty means NodePorts on the node's primary IP
	// and health check ports on every address (kube-proxy's default).
	NodePortAddresses []string `json:"nodePortAddresses,omitempty"`
	// LocalhostNodePorts also serves NodePorts on 127.0.0.1 (sets
	// route_localnet, with upstream's CVE-2020-8558 guard). iptables mode
	// only, as upstream: nftables and ipvs modes ignore it with a warning.
	LocalhostNodePorts bool `json:"localhostNodePorts,omitempty"`
	// MasqueradeAll masquerades all traffic to cluster IPs.
	MasqueradeAll bool `json:"masqueradeAll,omitempty"`
	// Conntrack sets the node's connection-tracking timeouts when the
	// proxy starts, as kube-proxy's conntrack settings do.
	Conntrack ConntrackConfig `json:"conntrack,omitempty"`
	// IPVS configures ipvs mode.
	IPVS IPVSConfig `json:"ipvs,omitempty"`
}

// ConntrackConfig are the node's TCP connection-tracking timeouts (the
// network namespace's net.netfilter.nf_conntrack_tcp_timeout_*), with
// kube-proxy's defaults; 0s leaves the kernel's value alone.
type ConntrackConfig struct {
	// TCPEstablishedTimeout: default 24h (the kernel's is 5 days).
	TCPEstablishedTimeout *metav1.Duration `json:"tcpEstablishedTimeout,omitempty"`
	// TCPCloseWaitTimeout: default 1h (the kernel's is 60s), so that a
	// half-closed connection through a Service is not forgotten while
	// its other side still sends.
	TCPCloseWaitTimeout *metav1.Duration `json:"tcpCloseWaitTimeout,omitempty"`
}

// IPVSConfig configures ipvs mode.
type IPVSConfig struct {
	// Scheduler is the node's default scheduler (rr); a service may choose
	// its own with the kdive.dev/ipvs-scheduler annotation.
	Scheduler string `json:"scheduler,omitempty"`
}

// ProxyModeNone runs no service proxy: the pod network only.
const ProxyModeNone = "none"

// ProxyModes are the modes Validate accepts: internal/proxy/modes's and
// none.
var ProxyModes = append(modes.Names(), ProxyModeNone)

// Defaults for fields left empty.
const (
	DefaultConfDir       = "/etc/cni/net.d"
	DefaultDataDir       = "/var/lib/cni/kdive"
	DefaultSyncPeriod    = 30 * time.Second
	DefaultMinSyncPeriod = 100 * time.Millisecond
	// kube-proxy's conntrack defaults.
	DefaultTCPEstablishedTimeout = 24 * time.Hour
	DefaultTCPCloseWaitTimeout   = time.Hour
)

// LoadConfiguration reads a configuration file strictly: an unknown field
// is an error naming it.
func LoadConfiguration(path string) (*Configuration, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("agent configuration: %w", err)
	}
	return ParseConfiguration(b)
}

// ParseConfiguration decodes a configuration (YAML or JSON) strictly.
func ParseConfiguration(b []byte) (*Configuration, error) {
	j, err := yaml.YAMLToJSON(b)
	if err != nil {
		return nil, fmt.Errorf("agent configuration: %w", err)
	}
	// Durations decode through metav1.Duration, whose errors do not say
	// which field was wrong; check them first so the message does.
	var durations map[string]any
	if json.Unmarshal(j, &durations) == nil {
		for _, f := range []string{"syncPeriod", "minSyncPeriod"} {
			if v, ok := durations[f]; ok {
				str, _ := v.(string)
				if _, err := time.ParseDuration(str); err != nil {
					return nil, fmt.Errorf("agent configuration: %s: %v is not a duration such as 30s", f, v)
				}
			}
		}
	}
	var c Configuration
	strict, err := kjson.UnmarshalStrict(j, &c)
	if err != nil {
		return nil, fmt.Errorf("agent configuration: %w", err)
	}
	if len(strict) > 0 {
		return nil, fmt.Errorf("agent configuration: %w", errors.Join(strict...))
	}
	return &c, nil
}

// Default fills the fields left empty.
func (c *Configuration) Default() {
	if c.APIVersion == "" {
		c.APIVersion = APIVersion
	}
	if c.Kind == "" {
		c.Kind = Kind
	}
	if c.NodeName == "" {
		c.NodeName = os.Getenv("NODE_NAME")
	}
	if c.NodeName == "" {
		c.NodeName, _ = os.Hostname()
	}
	if c.PodNetwork.Interface == "" {
		c.PodNetwork.Interface = model.InterfaceRouted
	}
	if c.PodNetwork.Encap == "" {
		c.PodNetwork.Encap = model.EncapVXLAN
	}
	if c.PodNetwork.EncapPolicy == "" {
		c.PodNetwork.EncapPolicy = model.EncapCrossSubnet
	}
	if c.CNI.ConfDir == "" {
		c.CNI.ConfDir = DefaultConfDir
	}
	if c.CNI.DataDir == "" {
		c.CNI.DataDir = DefaultDataDir
	}
	if c.HealthzBindAddress == "" {
		c.HealthzBindAddress = "0.0.0.0:10256"
	}
	if c.MetricsBindAddress == "" {
		c.MetricsBindAddress = "127.0.0.1:10249"
	}
	if c.Proxy.Mode == "" {
		c.Proxy.Mode = "nftables"
	}
	if c.SyncPeriod.Duration == 0 {
		c.SyncPeriod.Duration = DefaultSyncPeriod
	}
	if c.MinSyncPeriod.Duration == 0 {
		c.MinSyncPeriod.Duration = DefaultMinSyncPeriod
	}
	if c.Proxy.Conntrack.TCPEstablishedTimeout == nil {
		c.Proxy.Conntrack.TCPEstablishedTimeout = &metav1.Duration{Duration: DefaultTCPEstablishedTimeout}
	}
	if c.Proxy.Conntrack.TCPCloseWaitTimeout == nil {
		c.Proxy.Conntrack.TCPCloseWaitTimeout = &metav1.Duration{Duration: DefaultTCPCloseWaitTimeout}
	}
}

// Validate checks a defaulted configuration; every error names its field.
func (c *Configuration) Validate() error {
	var errs []error
	bad := func(field string, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}
	if c.APIVersion != APIVersion {
		bad("apiVersion", "must be %s, not %q", APIVersion, c.APIVersion)
	}
	if c.Kind != Kind {
		bad("kind", "must be %s, not %q", Kind, c.Kind)
	}
	if c.NodeName == "" {
		bad("nodeName", "required (or set NODE_NAME)")
	}
	if c.PodNetwork.Interface == model.InterfaceNone {
		if c.Proxy.Mode == ProxyModeNone {
			bad("podNetwork.interface", "none with proxy.mode none leaves the agent nothing to do")
		}
	} else if err := c.PodNetwork.Validate("podNetwork"); err != nil {
		errs = append(errs, err)
	}
	if c.SysctlDir != "" && !filepath.IsAbs(c.SysctlDir) {
		bad("sysctlDir", "%q is not an absolute path", c.SysctlDir)
	}
	if c.MTU != 0 && (c.MTU < 576 || c.MTU > 9000) {
		bad("mtu", "%d is outside 576-9000", c.MTU)
	}
	if c.ClientConnection.Kubeconfig != "" && c.ClientConnection.LabStore != "" {
		bad("clientConnection", "kubeconfig and labStore are exclusive")
	}
	if a := c.ClientConnection.APIServer; a != "" {
		if u, err := url.Parse(a); err != nil || u.Scheme != "https" || u.Host == "" || (u.Path != "" && u.Path != "/") {
			bad("clientConnection.apiServer", "%q is not https://HOST[:PORT]", a)
		} else if c.ClientConnection.LabStore != "" {
			bad("clientConnection.apiServer", "does not apply with labStore")
		}
	}
	if !slices.Contains(ProxyModes, c.Proxy.Mode) {
		bad("proxy.mode", "unsupported value %q: must be one of %v", c.Proxy.Mode, ProxyModes)
	}
	if c.Proxy.ClusterCIDR != "" {
		if p, err := netip.ParsePrefix(c.Proxy.ClusterCIDR); err != nil || !p.Addr().Is4() {
			bad("proxy.clusterCIDR", "%q is not an IPv4 CIDR", c.Proxy.ClusterCIDR)
		}
	}
	for i, a := range c.Proxy.NodePortAddresses {
		if _, err := netip.ParsePrefix(a); err != nil {
			bad(fmt.Sprintf("proxy.nodePortAddresses[%d]", i), "%q is not a CIDR", a)
		}
	}
	for f, a := range map[string]string{"healthzBindAddress": c.HealthzBindAddress, "metricsBindAddress": c.MetricsBindAddress} {
		if a == "0" {
			continue
		}
		if _, _, err := net.SplitHostPort(a); err != nil {
			bad(f, "%q is not HOST:PORT", a)
		}
	}
	for f, d := range map[string]*metav1.Duration{
		"proxy.conntrack.tcpEstablishedTimeout": c.Proxy.Conntrack.TCPEstablishedTimeout,
		"proxy.conntrack.tcpCloseWaitTimeout":   c.Proxy.Conntrack.TCPCloseWaitTimeout,
	} {
		if d != nil && (d.Duration < 0 || d.Duration%time.Second != 0) {
			bad(f, "%s must be whole seconds, 0 or more", d.Duration)
		}
	}
	if c.SyncPeriod.Duration < time.Second {
		bad("syncPeriod", "%s is shorter than 1s", c.SyncPeriod.Duration)
	}
	if c.MinSyncPeriod.Duration < 0 || c.MinSyncPeriod.Duration > c.SyncPeriod.Duration {
		bad("minSyncPeriod", "%s must be between 0 and syncPeriod", c.MinSyncPeriod.Duration)
	}
	if len(errs) > 0 {
		return fmt.Errorf("invalid agent configuration: %w", errors.Join(errs...))
	}
	return nil
}
