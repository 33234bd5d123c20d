package main

import (
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/kdive/kdive/internal/bench"
)

func newBenchDatapathCmd() *cobra.Command {
	var (
		rf    reportFlags
		mode  string
		opts  bench.DatapathOptions
		quiet bool
	)
	cmd := &cobra.Command{
		Use:   "datapath",
		Short: "First-packet latency and throughput to a ClusterIP",
		Long: `For each proxy mode and service count, build a node with a client pod and a
server pod (routed veths), program the mode's rules for that many services
directly, and measure from the client pod: first-packet latency (a new TCP
connection and one small request/response to a ClusterIP, p50/p90/p99) and
the throughput of one TCP stream through the ClusterIP against pod-to-pod
direct. Modes the kernel lacks (ipvs without ip_vs) are reported, not run.`,
		Example: `  kdive bench datapath --mode all --services 100,1000,10000 -o markdown
  kdive bench datapath --mode nftables --services 10000 --svg datapath.svg`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if mode != "all" {
				opts.Modes = strings.Split(mode, ",")
			}
			if !quiet {
				opts.Progress = benchDatapathProgress(cmd)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			runs, err := bench.RunDatapath(ctx, opts)
			if err != nil {
				return err
			}
			return rf.write(cmd, bench.DatapathReport(runs, opts))
		},
	}
	rf.register(cmd)
	f := cmd.Flags()
	f.StringVar(&mode, "mode", "all", "proxy mode: nftables, iptables, ipvs (comma-separated) or all")
	f.IntSliceVar(&opts.Services, "services", []int{100, 1000, 10000}, "service counts to measure")
	f.IntVar(&opts.Samples, "samples", 300, "new connections timed per service count")
	f.DurationVar(&opts.SampleTime, "sample-time", 10*time.Second, "time limit of the connections of one service count")
	f.DurationVar(&opts.Duration, "duration", 2*time.Second, "length of each throughput stream")
	f.BoolVarP(&quiet, "quiet", "q", false, "do not print progress to stderr")
	return cmd
}

func newBenchEncapCmd() *cobra.Command {
	var (
		rf    reportFlags
		opts  bench.EncapOptions
		quiet bool
	)
	cmd := &cobra.Command{
		Use:   "encap",
		Short: "Throughput and latency between pods on two nodes per encapsulation",
		Long: `For each encapsulation (policy always), build two nodes on one L2 segment with
a routed pod each, program the pod network with kdive's podnet, and measure
pod to pod: the throughput of one TCP stream and request/response latency
(p50/p99), against a bare veth between two namespaces measured in the same
run. Modes the kernel lacks (ipip without the ipip module) are reported, not
run.`,
		Example: `  kdive bench encap -o markdown
  kdive bench encap --mode none,vxlan --svg encap.svg`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !quiet {
				opts.Progress = benchDatapathProgress(cmd)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			runs, err := bench.RunEncap(ctx, opts)
			if err != nil {
				return err
			}
			return rf.write(cmd, bench.EncapReport(runs, opts))
		},
	}
	rf.register(cmd)
	f := cmd.Flags()
	f.StringSliceVar(&opts.Modes, "mode", bench.EncapModes, "encapsulations: none, ipip, vxlan (comma-separated)")
	f.DurationVar(&opts.Duration, "duration", 2*time.Second, "length of each throughput stream")
	f.IntVar(&opts.Samples, "samples", 2000, "request/response round trips per mode")
	f.DurationVar(&opts.SampleTime, "sample-time", 5*time.Second, "time limit of the round trips of one mode")
	f.BoolVarP(&quiet, "quiet", "q", false, "do not print progress to stderr")
	return cmd
}

// benchDatapathProgress prints a bench's progress lines on stderr.
func benchDatapathProgress(cmd *cobra.Command) func(string) {
	return func(s string) { fmt.Fprintln(cmd.ErrOrStderr(), "kdive bench:", s) }
}
