package main

import (
	"context"
	"fmt"
	"slices"

	"github.com/spf13/cobra"

	"github.com/kdive/kdive/internal/diag"
)

// showKinds are the things `kdive show` shows, registered in this one
// place.
var showKinds = map[string]func(context.Context, diag.Target, diag.Output) error{
	"routes": diag.ShowRoutes,
	"links":  diag.ShowLinks,
	"lb":     diag.ShowLB,
	"pods":   diag.ShowPods,
	"blocks": diag.ShowBlocks,
}

func newShowCmd() *cobra.Command {
	var (
		t      diag.Target
		output string
	)
	kinds := make([]string, 0, len(showKinds))
	for k := range showKinds {
		kinds = append(kinds, k)
	}
	slices.Sort(kinds)
	cmd := &cobra.Command{
		Use:   "show routes|links|lb|pods|blocks [--lab NAME --node NODE] [-o table|json]",
		Short: "Show a node's routes, links, load-balancing tables, pods or pod blocks with their Kubernetes meaning",
		Long: `Show a node's kernel state annotated with what it means for the cluster:

  routes  every route of the main table: pod blocks of other nodes and how they
          are reached (direct, IPIP, VXLAN; same subnet or cross-subnet), the
          blackhole of this node's own block, each pod's /32 (routed mode), the
          node subnet, the lab's service CIDR and LoadBalancer pool, and
          anything kdive does not own, marked foreign
  links   every interface and its role: uplink, tunnel and its peers, VXLAN and
          its FDB peers, pod veth and its pod, kube-bridge and its ports,
          kube-ipvs0 and its service IPs, loopback, foreign
  lb      the load-balancing table (service address -> endpoints) of the proxy
  pods    the pods on the node: IP, host interface, network namespace and CNI
          attachment, with any inconsistency between IPAM, veths and routes
  blocks  which node owns which pod block and how much of it is allocated

--lab NAME --node NODE looks at a node of a lab (pods and blocks take every
node of the lab without --node). Without --lab, kdive looks at this machine
(its own network namespace): names come from the kernel, the kdive CNI config
(/etc/cni/net.d), its IPAM store and the runtime's CNI cache (/var/lib/cni);
the API server is not asked, so other nodes' blocks are shown by address and
--node only names this node (default: the hostname).

-o json prints the same rows with stable field names (see internal/diag).`,
		ValidArgs: kinds,
		Args:      cobra.MatchAll(cobra.ExactArgs(1), cobra.OnlyValidArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := diag.ParseFormat(output)
			if err != nil {
				return fmt.Errorf("--output: %w", err)
			}
			return showKinds[args[0]](cmd.Context(), t, diag.Output{Format: f, W: cmd.OutOrStdout()})
		},
	}
	cmd.Flags().StringVar(&t.Lab, "lab", "", "lab to look at (default: this machine)")
	cmd.Flags().StringVar(&t.Node, "node", "", "node of the lab (without --lab: this node's name)")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	return cmd
}
