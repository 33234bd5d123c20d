package main

import "github.com/spf13/cobra"

func newBenchSyncCmd() *cobra.Command {
	return &cobra.Command{Use: "sync", Short: "Control-plane cost of programming services", Args: cobra.NoArgs,
		RunE: notImplemented("kdive bench sync")}
}
