package main

import "github.com/spf13/cobra"

// The commands below are part of the stable command line (DESIGN.md) and
// answer "not implemented yet" with exit status 2 until their capability
// lands. Their flags are registered now so scripts fail for the right reason.

func newBenchCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Benchmark the proxy modes and encapsulations in throwaway namespaces",
	}
	for _, sub := range []struct{ name, short string }{
		{"sync", "Control-plane cost of programming services"},
		{"datapath", "First-packet latency and throughput to a ClusterIP"},
		{"encap", "Throughput and latency between pods on two nodes per encapsulation"},
	} {
		c := &cobra.Command{
			Use:   sub.name,
			Short: sub.short,
			Args:  cobra.NoArgs,
			RunE:  notImplemented("kdive bench " + sub.name),
		}
		c.Flags().StringP("output", "o", "table", "output format: table, json or markdown")
		c.Flags().String("svg", "", "also write a chart to this SVG file")
		cmd.AddCommand(c)
	}
	return cmd
}
