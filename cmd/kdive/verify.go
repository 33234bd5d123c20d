package main

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/kdive/kdive/internal/diag"
	"github.com/kdive/kdive/internal/lab"
	"github.com/kdive/kdive/internal/verify"
)

// ErrVerifyFailed is returned by `kdive verify` when a check failed; main
// turns it into exit status 1.
var ErrVerifyFailed = errors.New("verification failed")

func newVerifyCmd() *cobra.Command {
	var (
		labName, output      string
		kubeconfig, kctx     string
		image                string
		keep                 bool
		checks               []string
		timeout, syncTimeout time.Duration
	)
	var list strings.Builder
	for _, c := range verify.Checks() {
		about := c.About
		if c.On != "" {
			about += " (" + c.On + " only)"
		}
		fmt.Fprintf(&list, "  %-30s %s\n", c.Name, about)
	}
	cmd := &cobra.Command{
		Use:   "verify [--lab NAME | --kubeconfig FILE --context NAME] [-o table|json] [--keep] [--check NAME,...]",
		Short: "Verify connectivity and load balancing by sending real traffic (exit status 1 when a check fails)",
		Long: `Verify applies a workload (namespace ` + verify.Namespace + `: echo pods on every node,
ClusterIP, NodePort, LoadBalancer and session-affinity Services), waits until
it is in place (its pods running and ready, their EndpointSlices, in a lab the
LoadBalancer IPs) and every node's proxy has programmed it, sends real traffic
from pods and nodes, and reports each check with ✓ or ✗ and the reason of a
failure. The workload is removed afterwards unless --keep.

With --lab it verifies a lab: traffic starts in the lab's namespaces, also from
its external client, and each node's tables are read back from its kernel.

Without --lab it verifies the cluster of the kubeconfig (--kubeconfig, else
$KUBECONFIG or ~/.kube/config; --context) through its API server only, as
cilium connectivity test does: the pods run --image (kdive's, which has the
echo server and the probe), a host-network pod on every node sends the node's
traffic, and every request is sent by ` + "`kdive probe`" + ` exec'd in a pod. What needs
the lab (an external client, the nodes' subnets, their kernels) is reported
as skipped, with the reason.

Checks:
` + list.String(),
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return fmt.Errorf("--output %q: must be table or json", output)
			}
			var bins lab.Binaries
			if labName != "" {
				if kubeconfig != "" || kctx != "" || image != "" {
					return fmt.Errorf("--lab verifies a lab; --kubeconfig, --context and --image are for a cluster")
				}
				var err error
				if bins, err = lab.FindBinaries(""); err != nil {
					return err
				}
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			rep, err := verify.Run(ctx, verify.Options{
				Lab: labName, Kubeconfig: kubeconfig, Context: kctx, Image: image,
				Binaries: bins, Checks: checks, Keep: keep,
				Inspect: diag.InspectProxy, RequestTimeout: timeout, SyncTimeout: syncTimeout,
			})
			if rep != nil {
				var werr error
				if output == "json" {
					werr = rep.WriteJSON(cmd.OutOrStdout())
				} else {
					werr = rep.WriteTable(cmd.OutOrStdout())
				}
				err = errors.Join(err, werr)
				if !rep.OK {
					err = errors.Join(fmt.Errorf("%s: %w", strings.Join(rep.Failed(), ", "), ErrVerifyFailed), err)
				}
			}
			return err
		},
	}
	cmd.Flags().StringVar(&labName, "lab", "", "lab to verify (default: the cluster of the kubeconfig)")
	cmd.Flags().StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig of the cluster to verify (default $KUBECONFIG, else ~/.kube/config)")
	cmd.Flags().StringVar(&kctx, "context", "", "kubeconfig context (default the current one)")
	cmd.Flags().StringVar(&image, "image", "", "image of the workload's pods on a cluster (default kdive's, as deploy/kdive.yaml names it)")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	cmd.Flags().BoolVar(&keep, "keep", false, "leave the workload in place afterwards")
	cmd.Flags().StringSliceVar(&checks, "check", nil, "run only these checks (comma-separated names)")
	cmd.Flags().DurationVar(&timeout, "timeout", 3*time.Second, "timeout of each request")
	cmd.Flags().DurationVar(&syncTimeout, "sync-timeout", 0, "how long to wait for the workload to run and every agent to program it (default 1m; 3m on a Kubernetes lab or a cluster)")
	return cmd
}
