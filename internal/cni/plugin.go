package cni

import (
	"fmt"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
)

// SupportedVersions are the CNI spec versions the plugin accepts.
var SupportedVersions = []string{"0.4.0", "1.0.0", "1.1.0"}

// Funcs returns the plugin's command handlers for skel.PluginMainFuncs.
// VERSION is answered by skel itself from SupportedVersions.
func Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{
		Add:    notYet("ADD"),
		Del:    notYet("DEL"),
		Check:  notYet("CHECK"),
		GC:     notYet("GC"),
		Status: notYet("STATUS"),
	}
}

func notYet(cmd string) func(*skel.CmdArgs) error {
	return func(*skel.CmdArgs) error {
		return types.NewError(types.ErrInternal, fmt.Sprintf("kdive-cni: %s is not implemented yet", cmd),
			"this kdive-cni build answers VERSION only; the pod network lands with the pod-network capability")
	}
}
