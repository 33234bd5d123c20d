package main

import "github.com/spf13/cobra"

func newBenchDatapathCmd() *cobra.Command {
	return &cobra.Command{Use: "datapath", Short: "First-packet latency and throughput to a ClusterIP", Args: cobra.NoArgs,
		RunE: notImplemented("kdive bench datapath")}
}

func newBenchEncapCmd() *cobra.Command {
	return &cobra.Command{Use: "encap", Short: "Throughput and latency between pods on two nodes per encapsulation", Args: cobra.NoArgs,
		RunE: notImplemented("kdive bench encap")}
}
