package cni

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	sigsjson "sigs.k8s.io/json"

	"github.com/kdive/kdive/internal/cni/ipam"
	"github.com/kdive/kdive/internal/model"
)

// The names of the contract between the agent, the runtime and the plugin.
const (
	// NetworkName is the network's name in the conflist.
	NetworkName = "kdive"
	// PluginType is the plugin's type, the file name runtimes look for on
	// CNI_PATH (cmd/kdive-cni is installed under this name).
	PluginType = "kdive"
	// ConfListFile is the file the agent writes into the CNI config dir.
	ConfListFile = "10-kdive.conflist"
	// ConfListVersion is the CNI spec version of the conflist.
	ConfListVersion = "1.1.0"

	DefaultDataDir        = "/var/lib/cni/kdive"
	DefaultBridge         = "kube-bridge"
	DefaultHostVethPrefix = "cali"

	MinMTU = 576
	MaxMTU = 9000
)

// RoutedGateway is every pod's gateway in routed mode: no host owns it; the
// host side of the pod's veth answers ARP for it (proxy ARP).
var RoutedGateway = netip.MustParseAddr("169.254.1.1")

// NetConf is the plugin's configuration as the runtime passes it on stdin:
// the standard keys (types.PluginConf and the runtime-injected
// runtimeConfig and args) and kdive's own.
type NetConf struct {
	types.PluginConf

	// Mode is how pods attach: routed (host-side veth, /32 routes, proxy
	// ARP) or bridge (veths on a Linux bridge).
	Mode model.Interface `json:"mode"`
	// PodCIDR is this node's pod block (node.spec.podCIDR).
	PodCIDR string `json:"podCIDR"`
	// MTU of both ends of each pod's veth (and of the bridge).
	MTU int `json:"mtu"`
	// DataDir holds the IPAM store; DefaultDataDir when empty.
	DataDir string `json:"dataDir,omitempty"`
	// Bridge is the bridge's name, bridge mode only; DefaultBridge when
	// empty.
	Bridge string `json:"bridge,omitempty"`
	// HostVethPrefix starts the host-side veth names, routed mode only;
	// DefaultHostVethPrefix when empty.
	HostVethPrefix string `json:"hostVethPrefix,omitempty"`

	RuntimeConfig map[string]any `json:"runtimeConfig,omitempty"`
	Args          map[string]any `json:"args,omitempty"`
	// LegacyAttachments is the GC list under the name a spec draft used;
	// libcni sends both.
	LegacyAttachments []types.GCAttachment `json:"cni.dev/attachments,omitempty"`

	// Block is PodCIDR parsed, set by ParseConfig.
	Block netip.Prefix `json:"-"`
}

// MarshalJSON writes every key of the configuration. (Without it the
// embedded PluginConf's MarshalJSON would be promoted and drop kdive's keys.)
func (c NetConf) MarshalJSON() ([]byte, error) {
	base, err := json.Marshal(&c.PluginConf)
	if err != nil {
		return nil, err
	}
	var all map[string]json.RawMessage
	if err := json.Unmarshal(base, &all); err != nil {
		return nil, err
	}
	type own struct {
		Mode              model.Interface      `json:"mode"`
		PodCIDR           string               `json:"podCIDR"`
		MTU               int                  `json:"mtu"`
		DataDir           string               `json:"dataDir,omitempty"`
		Bridge            string               `json:"bridge,omitempty"`
		HostVethPrefix    string               `json:"hostVethPrefix,omitempty"`
		RuntimeConfig     map[string]any       `json:"runtimeConfig,omitempty"`
		Args              map[string]any       `json:"args,omitempty"`
		LegacyAttachments []types.GCAttachment `json:"cni.dev/attachments,omitempty"`
	}
	ob, err := json.Marshal(own{c.Mode, c.PodCIDR, c.MTU, c.DataDir, c.Bridge, c.HostVethPrefix,
		c.RuntimeConfig, c.Args, c.LegacyAttachments})
	if err != nil {
		return nil, err
	}
	var mine map[string]json.RawMessage
	if err := json.Unmarshal(ob, &mine); err != nil {
		return nil, err
	}
	for k, v := range mine {
		all[k] = v
	}
	return json.Marshal(all)
}

// knownKeys are the top-level keys ParseConfig accepts, from NetConf's
// JSON tags.
var knownKeys = func() []string {
	var keys []string
	var walk func(t reflect.Type)
	walk = func(t reflect.Type) {
		for i := range t.NumField() {
			f := t.Field(i)
			if f.Anonymous {
				walk(f.Type)
				continue
			}
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if name != "" && name != "-" {
				keys = append(keys, name)
			}
		}
	}
	walk(reflect.TypeFor[NetConf]())
	slices.Sort(keys)
	return keys
}()

// ParseConfig decodes and checks the configuration a runtime passes on
// stdin. It is strict: an unknown key (a typo such as "podCDIR"), a
// duplicated key, a missing or invalid value are errors naming the key. The
// error is a *types.Error with code ErrDecodingFailure (not JSON, wrong
// type) or ErrInvalidNetworkConfig (everything else). Defaults are filled
// in: DataDir, and Bridge or HostVethPrefix for the mode.
func ParseConfig(stdin []byte) (*NetConf, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(stdin, &top); err != nil || top == nil {
		if err == nil {
			err = fmt.Errorf("got %s", strings.TrimSpace(string(stdin)))
		}
		return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("network config: not a JSON object: %v", err), "")
	}
	if err := checkKeys(top); err != nil {
		return nil, err
	}
	var c NetConf
	strict, err := sigsjson.UnmarshalStrict(stdin, &c)
	if err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("network config: %v", err), "")
	}
	if len(strict) > 0 {
		msgs := make([]string, len(strict))
		for i, e := range strict {
			msgs[i] = e.Error()
		}
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "network config: "+strings.Join(msgs, "; "), "")
	}
	if err := c.validate(); err != nil {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "network config: "+err.Error(), "")
	}
	return &c, nil
}

// checkKeys rejects unknown top-level keys, suggesting the closest known.
func checkKeys(top map[string]json.RawMessage) error {
	var msgs []string
	for k := range top {
		if slices.Contains(knownKeys, k) {
			continue
		}
		msg := fmt.Sprintf("unknown key %q", k)
		if s := closest(k, knownKeys); s != "" {
			msg += fmt.Sprintf(" (did you mean %q?)", s)
		}
		msgs = append(msgs, msg)
	}
	if len(msgs) == 0 {
		return nil
	}
	slices.Sort(msgs)
	return types.NewError(types.ErrInvalidNetworkConfig, "network config: "+strings.Join(msgs, "; "), "")
}

var prefixRE = regexp.MustCompile(`^[a-z][a-z0-9]{0,6}$`)

// validate checks the values and fills in the defaults.
func (c *NetConf) validate() error {
	if c.Name == "" {
		return fmt.Errorf("name: required")
	}
	if c.IPAM.Type != "" {
		return fmt.Errorf("ipam: kdive assigns pod addresses itself, from podCIDR; remove the ipam section (type %q)", c.IPAM.Type)
	}
	switch c.Mode {
	case model.InterfaceRouted, model.InterfaceBridge:
	case "":
		return fmt.Errorf("mode: required (routed or bridge)")
	default:
		return fmt.Errorf("mode: unknown mode %q (must be routed or bridge)", c.Mode)
	}
	if c.PodCIDR == "" {
		return fmt.Errorf("podCIDR: required (this node's pod block, e.g. 10.0.1.0/24)")
	}
	block, err := netip.ParsePrefix(c.PodCIDR)
	if err != nil {
		return fmt.Errorf("podCIDR: %q is not a CIDR block such as 10.0.1.0/24", c.PodCIDR)
	}
	if err := ipam.CheckBlock(block); err != nil {
		return fmt.Errorf("podCIDR: %w", err)
	}
	c.Block = block
	if c.MTU == 0 {
		return fmt.Errorf("mtu: required (the uplink's MTU minus the encapsulation overhead)")
	}
	if c.MTU < MinMTU || c.MTU > MaxMTU {
		return fmt.Errorf("mtu: %d is out of range %d..%d", c.MTU, MinMTU, MaxMTU)
	}
	if c.DataDir == "" {
		c.DataDir = DefaultDataDir
	}
	if !filepath.IsAbs(c.DataDir) {
		return fmt.Errorf("dataDir: %q is not an absolute path", c.DataDir)
	}
	c.DataDir = filepath.Clean(c.DataDir)
	if c.Mode == model.InterfaceRouted {
		if c.Bridge != "" {
			return fmt.Errorf("bridge: only used in bridge mode (mode is %s)", c.Mode)
		}
		if c.HostVethPrefix == "" {
			c.HostVethPrefix = DefaultHostVethPrefix
		}
		if !prefixRE.MatchString(c.HostVethPrefix) {
			return fmt.Errorf("hostVethPrefix: %q must be 1 to 7 lower-case letters and digits, starting with a letter", c.HostVethPrefix)
		}
		return nil
	}
	if c.HostVethPrefix != "" {
		return fmt.Errorf("hostVethPrefix: only used in routed mode (mode is %s)", c.Mode)
	}
	if c.Bridge == "" {
		c.Bridge = DefaultBridge
	}
	if err := checkIfName(c.Bridge); err != nil {
		return fmt.Errorf("bridge: %w", err)
	}
	return nil
}

// PortMapping is one hostPort of a pod: connections to HostPort (on HostIP,
// or on every address of the node when HostIP is the zero Addr) are
// forwarded to the pod's ContainerPort. Runtimes pass them in
// runtimeConfig.portMappings to plugins that declare the portMappings
// capability, as the upstream portmap plugin receives them.
type PortMapping struct {
	HostIP        netip.Addr `json:"hostIP,omitzero"`
	Protocol      string     `json:"protocol"` // tcp, udp or sctp
	HostPort      uint16     `json:"hostPort"`
	ContainerPort uint16     `json:"containerPort"`
}

// String reads like "8080/tcp -> :80" or "192.0.2.1:8080/udp -> :53".
func (m PortMapping) String() string {
	host := strconv.Itoa(int(m.HostPort))
	if m.HostIP.IsValid() {
		host = netip.AddrPortFrom(m.HostIP, m.HostPort).String()
	}
	return fmt.Sprintf("%s/%s -> :%d", host, m.Protocol, m.ContainerPort)
}

// PortMappings parses runtimeConfig.portMappings: [{"hostPort": 8080,
// "containerPort": 80, "protocol": "tcp", "hostIP": ""}, ...]. It is strict
// about what it uses: both ports must be integers in 1..65535, protocol tcp,
// udp or sctp in any case (empty means tcp), hostIP empty, 0.0.0.0 (every
// node address) or one IPv4 address, and a pod may not map the same hostIP,
// protocol and hostPort twice. A loopback hostIP (127.0.0.0/8) serves the
// node's own connections from a node address, as upstream's conformance
// test connects (curl --interface NODE-IP http://127.0.0.1:PORT); kdive
// never sets route_localnet (CVE-2020-8558), so neither a neighbour nor a
// connection from a loopback source reaches it. Keys match as Go's
// encoding/json matches them, exactly or else in any case: containerd's
// go-cni writes "HostPort", "ContainerPort", "Protocol", "HostIP". Mappings with an IPv6 hostIP are skipped, as the upstream
// portmap plugin skips them for an IPv4 container: kdive's pods are
// IPv4-only. Keys it does not use are ignored: runtimes write this list, not
// people, and may add fields. The error is a *types.Error with code
// ErrInvalidNetworkConfig naming the field, e.g.
// "runtimeConfig.portMappings[1].hostPort: 70000 is out of range 1-65535".
//
// ParseConfig does not call it: only ADD and CHECK use the mappings, and a
// DEL or GC must work even for a pod whose ADD failed on them.
func (c *NetConf) PortMappings() ([]PortMapping, error) {
	raw, ok := c.RuntimeConfig["portMappings"]
	if !ok || raw == nil {
		return nil, nil
	}
	ms, err := parsePortMappings(raw)
	if err != nil {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "network config: "+err.Error(), "")
	}
	return ms, nil
}

const portMappingsKey = "runtimeConfig.portMappings"

func parsePortMappings(raw any) ([]PortMapping, error) {
	list, ok := raw.([]any)
	if !ok {
		return nil, fmt.Errorf("%s: must be a list of mappings, got %s", portMappingsKey, jsonText(raw))
	}
	var out []PortMapping
	first := map[PortMapping]int{} // the key fields of each mapping -> its index
	for i, e := range list {
		path := fmt.Sprintf("%s[%d]", portMappingsKey, i)
		obj, ok := e.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("%s: must be an object, got %s", path, jsonText(e))
		}
		m, skip, err := parsePortMapping(path, obj)
		if err != nil {
			return nil, err
		}
		if skip {
			continue
		}
		key := PortMapping{HostIP: m.HostIP, Protocol: m.Protocol, HostPort: m.HostPort}
		if j, dup := first[key]; dup {
			where := "every node address"
			if m.HostIP.IsValid() {
				where = m.HostIP.String()
			}
			return nil, fmt.Errorf("%s: hostPort %d/%s on %s is already mapped by %s[%d]", path, m.HostPort, m.Protocol, where, portMappingsKey, j)
		}
		first[key] = i
		out = append(out, m)
	}
	return out, nil
}

// parsePortMapping reads one mapping; skip reports an IPv6 hostIP.
func parsePortMapping(path string, obj map[string]any) (m PortMapping, skip bool, err error) {
	for _, f := range []struct {
		name string
		dst  *uint16
	}{{"hostPort", &m.HostPort}, {"containerPort", &m.ContainerPort}} {
		v, ok := jsonField(obj, f.name)
		if !ok || v == nil {
			return m, false, fmt.Errorf("%s.%s: required", path, f.name)
		}
		n, ok := jsonInt(v)
		if !ok {
			return m, false, fmt.Errorf("%s.%s: %s is not an integer", path, f.name, jsonText(v))
		}
		if n < 1 || n > 65535 {
			return m, false, fmt.Errorf("%s.%s: %d is out of range 1-65535", path, f.name, n)
		}
		*f.dst = uint16(n)
	}
	protocol, _ := jsonField(obj, "protocol")
	proto, err := jsonString(path+".protocol", protocol)
	if err != nil {
		return m, false, err
	}
	switch m.Protocol = strings.ToLower(proto); m.Protocol {
	case "":
		m.Protocol = "tcp"
	case "tcp", "udp", "sctp":
	default:
		return m, false, fmt.Errorf("%s.protocol: %q is not tcp, udp or sctp", path, proto)
	}
	hostIP, _ := jsonField(obj, "hostIP")
	s, err := jsonString(path+".hostIP", hostIP)
	if err != nil || s == "" {
		return m, false, err
	}
	addr, err := netip.ParseAddr(s)
	if err != nil || addr.Zone() != "" {
		return m, false, fmt.Errorf("%s.hostIP: %q is not an IP address", path, s)
	}
	if addr.Is6() && !addr.Is4In6() {
		return m, true, nil // IPv6: pods are IPv4-only, see PortMappings.
	}
	switch addr = addr.Unmap(); {
	case addr.IsUnspecified():
		return m, false, nil // 0.0.0.0: every node address.
	case addr.IsMulticast() || addr == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return m, false, fmt.Errorf("%s.hostIP: %s is not a unicast address", path, addr)
	}
	m.HostIP = addr
	return m, false, nil
}

// jsonField is obj's key name as encoding/json finds a struct field's:
// the exact key, else the first in sorted order that equals it in any
// case.
func jsonField(obj map[string]any, name string) (any, bool) {
	if v, ok := obj[name]; ok {
		return v, true
	}
	keys := make([]string, 0, len(obj))
	for k := range obj {
		if strings.EqualFold(k, name) {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return nil, false
	}
	slices.Sort(keys)
	return obj[keys[0]], true
}

// jsonInt reads an integral JSON number as decoded into an any: int64 by
// sigs.k8s.io/json, float64 by encoding/json.
func jsonInt(v any) (int64, bool) {
	switch n := v.(type) {
	case int64:
		return n, true
	case int:
		return int64(n), true
	case float64:
		if n > -1e18 && n < 1e18 && n == float64(int64(n)) {
			return int64(n), true
		}
	case json.Number:
		i, err := n.Int64()
		return i, err == nil
	}
	return 0, false
}

// jsonString reads an optional string; null or absent is "".
func jsonString(path string, v any) (string, error) {
	if v == nil {
		return "", nil
	}
	s, ok := v.(string)
	if !ok {
		return "", fmt.Errorf("%s: %s is not a string", path, jsonText(v))
	}
	return s, nil
}

// jsonText shows a decoded JSON value in an error message.
func jsonText(v any) string {
	b, err := json.Marshal(v)
	if err != nil || len(b) > 64 {
		return fmt.Sprintf("a %T", v)
	}
	return string(b)
}

// closest returns the known key nearest to k, or "" when none is near
// enough to be a plausible typo.
func closest(k string, known []string) string {
	if len(k) > 64 {
		return ""
	}
	best, bestD := "", min(len(k)/2+1, 3)
	for _, c := range known {
		if d := editDistance(strings.ToLower(k), strings.ToLower(c)); d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

// editDistance is the optimal-string-alignment distance: insertions,
// deletions, substitutions and transpositions of neighbours cost 1.
func editDistance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	d := make([][]int, len(ra)+1)
	for i := range d {
		d[i] = make([]int, len(rb)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(ra); i++ {
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && ra[i-1] == rb[j-2] && ra[i-2] == rb[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(ra)][len(rb)]
}
