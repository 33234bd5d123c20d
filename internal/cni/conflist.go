package cni

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/kdive/kdive/internal/fileutil"
	"github.com/kdive/kdive/internal/model"
)

// ConfListOptions are the node's pod-network settings the agent renders
// into ConfListFile. The field names are the conflist's keys.
type ConfListOptions struct {
	// Mode is routed or bridge.
	Mode model.Interface
	// PodCIDR is the node's pod block (node.spec.podCIDR).
	PodCIDR netip.Prefix
	// MTU is the pod MTU: the uplink's minus the encapsulation overhead
	// (model.PodNetwork.PodMTU).
	MTU int
	// DataDir holds the IPAM store; DefaultDataDir when empty.
	DataDir string
	// Bridge is bridge mode's bridge; DefaultBridge when empty. It must be
	// empty in routed mode.
	Bridge string
	// HostVethPrefix starts routed mode's host-side veth names;
	// DefaultHostVethPrefix when empty. It must be empty in bridge mode.
	HostVethPrefix string
}

// pluginJSON fixes the order of the keys in the rendered file.
type pluginJSON struct {
	Type           string          `json:"type"`
	Capabilities   capabilities    `json:"capabilities"`
	Mode           model.Interface `json:"mode"`
	PodCIDR        string          `json:"podCIDR"`
	MTU            int             `json:"mtu"`
	DataDir        string          `json:"dataDir"`
	Bridge         string          `json:"bridge,omitempty"`
	HostVethPrefix string          `json:"hostVethPrefix,omitempty"`
}

// capabilities are the runtime-provided settings the plugin asks for:
// runtimes (through libcni) pass a capability's data as runtimeConfig only
// to plugins declaring it. portMappings carries the pods' hostPorts.
type capabilities struct {
	PortMappings bool `json:"portMappings"`
}

type confListJSON struct {
	CNIVersion string       `json:"cniVersion"`
	Name       string       `json:"name"`
	Plugins    []pluginJSON `json:"plugins"`
}

// NewConfList renders the node's network configuration list (network
// NetworkName, one plugin of type PluginType) with every default spelled
// out. The options are checked exactly as the plugin will check the file,
// so a conflist NewConfList accepts is one the plugin accepts.
func NewConfList(o ConfListOptions) ([]byte, error) {
	p := pluginJSON{
		Type: PluginType, Capabilities: capabilities{PortMappings: true}, Mode: o.Mode, MTU: o.MTU, DataDir: o.DataDir,
		Bridge: o.Bridge, HostVethPrefix: o.HostVethPrefix,
	}
	if o.PodCIDR.IsValid() {
		p.PodCIDR = o.PodCIDR.String()
	}
	// Validate as the plugin will receive it: with name and cniVersion
	// injected by the runtime.
	one, err := json.Marshal(struct {
		CNIVersion string `json:"cniVersion"`
		Name       string `json:"name"`
		pluginJSON
	}{ConfListVersion, NetworkName, p})
	if err != nil {
		return nil, fmt.Errorf("render %s: %w", ConfListFile, err)
	}
	c, err := ParseConfig(one)
	if err != nil {
		return nil, fmt.Errorf("render %s: %w", ConfListFile, err)
	}
	p.DataDir, p.Bridge, p.HostVethPrefix = c.DataDir, c.Bridge, c.HostVethPrefix
	out, err := json.MarshalIndent(confListJSON{ConfListVersion, NetworkName, []pluginJSON{p}}, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("render %s: %w", ConfListFile, err)
	}
	return append(out, '\n'), nil
}

// WriteConfList writes data as dir/ConfListFile atomically: runtimes watch
// the directory and must never read a half-written file. The temporary
// file's name ends in neither .conf, .conflist nor .json, so runtimes skip
// it. Writing the content the file already has changes nothing.
func WriteConfList(dir string, data []byte) error {
	path := filepath.Join(dir, ConfListFile)
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return fileutil.WriteAtomic(path, data, 0o644)
}
