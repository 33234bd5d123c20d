// Command kdive is the Kubernetes node network dataplane and its tools: the
// node agent, the lab, and the diagnostics. This package only turns flags
// into options and calls the internal packages.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

// Exit statuses.
const (
	exitError          = 1
	exitNotImplemented = 2
)

// errNotImplemented marks commands of the stable command line that this
// build does not have yet.
var errNotImplemented = errors.New("not implemented yet")

func main() {
	root := newRootCmd()
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "kdive:", err)
		if errors.Is(err, errNotImplemented) {
			os.Exit(exitNotImplemented)
		}
		os.Exit(exitError)
	}
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "kdive",
		Short: "Kubernetes node network dataplane: pod network, service proxy, and the tools to see and prove them",
		Long: `kdive gives pods their network (routed or bridged veths; direct routes, IPIP or
VXLAN between nodes) and replaces kube-proxy (nftables, iptables or IPVS), with
tools that show, trace, verify and benchmark what it programs. A lab builds a
multi-node cluster out of network namespaces on this machine:

  kdive lab up              # the default lab (preset D)
  kdive lab status kdive
  kdive lab down kdive`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(
		newLabCmd(),
		newShowCmd(),
		newTraceCmd(),
		newVerifyCmd(),
		newBenchCmd(),
		newAgentCmd(),
		newInstallCNICmd(),
		newEchoCmd(),
		newProbeCmd(),
		newVersionCmd(),
	)
	return root
}

// notImplemented is the RunE of commands that are registered (the command
// line is stable) but not built yet.
func notImplemented(what string) func(*cobra.Command, []string) error {
	return func(*cobra.Command, []string) error {
		return fmt.Errorf("%s: %w", what, errNotImplemented)
	}
}
