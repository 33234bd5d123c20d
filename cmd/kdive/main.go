// Command kdive is the Kubernetes node network dataplane and its tools: the
// node agent, the lab, and the diagnostics. This package only turns flags
// into options and calls the internal packages.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

// Exit statuses.
// exitError is the exit status of a command that failed.
const exitError = 1

func main() {
	root := newRootCmd()
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "kdive:", err)
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
