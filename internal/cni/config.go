package cni

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
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
