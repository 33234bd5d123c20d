//go:build tools

// This module exists only to build the CNI reference plugins (bridge,
// host-local, portmap, loopback) from github.com/containernetworking/plugins
// at a released version, for the Kubernetes lab whose pod network is not
// kdive's (podNetwork.interface: none): there kdive is the service proxy
// only, beside a CNI nobody here wrote. It is a module of its own so that
// the product's go.mod never depends on the plugins.
package tools

import (
	_ "github.com/containernetworking/plugins/plugins/ipam/host-local"
	_ "github.com/containernetworking/plugins/plugins/main/bridge"
	_ "github.com/containernetworking/plugins/plugins/main/loopback"
	_ "github.com/containernetworking/plugins/plugins/meta/portmap"
)
