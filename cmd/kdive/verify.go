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
		keep                 bool
		checks               []string
		timeout, syncTimeout time.Duration
	)
	var list strings.Builder
	for _, c := range verify.Checks() {
		fmt.Fprintf(&list, "  %-30s %s\n", c.Name, c.About)
	}
	cmd := &cobra.Command{
		Use:   "verify --lab NAME [-o table|json] [--keep] [--check NAME,...]",
		Short: "Verify connectivity and load balancing by sending real traffic (exit status 1 when a check fails)",
		Long: `Verify applies a workload to the lab (namespace ` + verify.Namespace + `: echo pods on every
node, ClusterIP, NodePort, LoadBalancer and session-affinity Services), waits
until it is in place (in a Kubernetes lab: its pods running and ready, their
EndpointSlices, the LoadBalancer IPs) and every agent has programmed it, sends
real traffic from pods, nodes and the lab's external client, and reports each
check with ✓ or ✗ and the reason of a failure. The workload is removed
afterwards unless --keep.

Checks:
` + list.String(),
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return fmt.Errorf("--output %q: must be table or json", output)
			}
			if labName == "" {
				return fmt.Errorf("kdive verify of this machine (without --lab): %w", errNotImplemented)
			}
			bins, err := lab.FindBinaries("")
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			rep, err := verify.Run(ctx, verify.Options{
				Lab: labName, Binaries: bins, Checks: checks, Keep: keep,
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
	cmd.Flags().StringVar(&labName, "lab", "", "lab to verify (default: this machine)")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	cmd.Flags().BoolVar(&keep, "keep", false, "leave the workload in the lab afterwards")
	cmd.Flags().StringSliceVar(&checks, "check", nil, "run only these checks (comma-separated names)")
	cmd.Flags().DurationVar(&timeout, "timeout", 3*time.Second, "timeout of each request")
	cmd.Flags().DurationVar(&syncTimeout, "sync-timeout", 0, "how long to wait for the workload to run and every agent to program it (default 1m; 3m on a Kubernetes lab)")
	return cmd
}
