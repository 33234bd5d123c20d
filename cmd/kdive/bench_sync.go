package main

import (
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/kdive/kdive/internal/bench"
)

func newBenchSyncCmd() *cobra.Command {
	var (
		rf        reportFlags
		mode      string
		flavour   string
		services  string
		endpoints int
		worker    bool
	)
	cmd := &cobra.Command{
		Use:   "sync",
		Short: "Control-plane cost of programming services",
		Long: `Measure the service proxy's control-plane cost in each mode: the first full
sync into an empty namespace, a one-endpoint change, a one-service add, a
no-op sync and a periodic full resync, the rules programmed, and the peak
RSS of the process doing it (each measurement runs in a child process of its
own). The floor is the same final ruleset loaded into a fresh namespace in
one shot by the kernel's own tool (nft -f, iptables-restore, ipvsadm -R), so
first/floor is the agent's overhead. Each run uses throwaway namespaces
named kdive-bench-sync-*, deleted afterwards.

  kdive bench sync --mode nftables --services 1000,10000 --endpoints 10 -o markdown`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if worker {
				return bench.ServeSyncWorker(ctx, cmd.InOrStdin(), cmd.OutOrStdout())
			}
			sizes, err := parseSizes(services)
			if err != nil {
				return err
			}
			self, err := os.Executable()
			if err != nil {
				return fmt.Errorf("bench sync: find own binary for the worker: %w", err)
			}
			opts := bench.SyncOptions{
				Modes:     strings.Split(mode, ","),
				Services:  sizes,
				Endpoints: endpoints,
				Worker:    []string{self, "bench", "sync", "--worker"},
			}
			if flavour != "all" {
				opts.Flavours = []string{flavour}
			}
			r, runErr := bench.RunSync(ctx, opts)
			if r == nil || ctx.Err() != nil {
				return runErr // interrupted: no partial table
			}
			if err := rf.write(cmd, r); err != nil {
				return err
			}
			return runErr
		},
	}
	rf.register(cmd)
	cmd.Flags().StringVar(&mode, "mode", "all", "proxy modes, comma-separated: nftables, iptables, ipvs, or all (every mode this kernel has)")
	cmd.Flags().StringVar(&flavour, "flavour", "all", "iptables flavour for --mode iptables: nft, legacy or all")
	cmd.Flags().StringVar(&services, "services", "1000", "number of services; a comma list runs each size")
	cmd.Flags().IntVar(&endpoints, "endpoints", 10, "endpoints per service")
	cmd.Flags().BoolVar(&worker, "worker", false, "run one measurement: a spec as JSON on stdin, the result as JSON on stdout")
	_ = cmd.Flags().MarkHidden("worker")
	return cmd
}

// parseSizes reads "1000,10000".
func parseSizes(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("--services %q: want positive numbers separated by commas", s)
		}
		out = append(out, n)
	}
	return out, nil
}
