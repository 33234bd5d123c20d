package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/kdive/kdive/internal/lab"
)

func newLabRestartCmd() *cobra.Command {
	var (
		kill    bool
		timeout time.Duration
		output  string
	)
	cmd := &cobra.Command{
		Use:   "restart NAME NODE [--kill]",
		Short: "Restart one node's agent (SIGTERM, or SIGKILL with --kill) and wait until it is healthy",
		Long: `Restart the kdive agent of one lab node as a kubelet restarts a kube-proxy pod:
stop it with SIGTERM (graceful), or with SIGKILL (--kill: the agent and the
nft or iptables-restore it may be running, as an OOM kill or a crash would),
start it again with the same arguments and log file, and wait until its
/healthz (:10256 in the node) answers 200: its first sync succeeded. The
rules, routes and tunnels the old agent programmed stay in the kernel
meanwhile, and the new agent adopts them, so traffic keeps flowing.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "text" && output != "json" {
				return fmt.Errorf("--output %q: must be text or json", output)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			opts := lab.RestartOptions{Kill: kill, Timeout: timeout}
			r, err := lab.RestartAgent(ctx, args[0], args[1], opts)
			if err != nil {
				return err
			}
			if output == "json" {
				return writeJSON(cmd.OutOrStdout(), r)
			}
			w := cmd.OutOrStdout()
			if r.OldPID == 0 {
				fmt.Fprintf(w, "agent of %s was not running; started pid %d, healthy after %s\n", r.Node, r.NewPID, r.Healthy.Round(time.Millisecond))
				return nil
			}
			forced := ""
			if r.Forced {
				forced = " (did not exit in time: killed)"
			}
			fmt.Fprintf(w, "agent of %s: %s to pid %d, gone after %s%s; pid %d healthy after %s\n", r.Node, r.Signal, r.OldPID,
				r.Stopped.Round(time.Millisecond), forced, r.NewPID, r.Healthy.Round(time.Millisecond))
			return nil
		},
	}
	cmd.Flags().BoolVar(&kill, "kill", false, "SIGKILL instead of SIGTERM")
	cmd.Flags().DurationVar(&timeout, "timeout", time.Minute, "how long to wait for the new agent to be healthy")
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json")
	return cmd
}
