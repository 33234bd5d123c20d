// Command kdive-cni is kdive's CNI plugin, installed on CNI_PATH as "kdive"
// (the plugin type in 10-kdive.conflist). A container runtime (or the lab,
// through libcni) executes it with CNI_COMMAND and a network configuration on
// stdin; the plugin logic lives in internal/cni.
package main

import (
	"github.com/containernetworking/cni/pkg/skel"
	cniversion "github.com/containernetworking/cni/pkg/version"

	"github.com/kdive/kdive/internal/cni"
	"github.com/kdive/kdive/internal/version"
)

func main() {
	skel.PluginMainFuncs(cni.Funcs(), cniversion.PluginSupports(cni.SupportedVersions...),
		"kdive-cni "+version.Get().Version)
}
