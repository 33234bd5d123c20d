package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/kdive/kdive/internal/bench"
)

func newBenchCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench sync|datapath|encap",
		Short: "Benchmark the proxy modes and encapsulations in throwaway namespaces",
		Long: `Benchmark kdive's modes side by side on this kernel. Every run builds network
namespaces of its own, sends traffic only between them (bounded in count and
time) and removes them. Results are tables (-o table), markdown (-o markdown)
or one JSON object per run (-o json); --svg FILE also draws a chart. Ratios are
against a baseline measured in the same run.`,
	}
	cmd.AddCommand(newBenchSyncCmd(), newBenchDatapathCmd(), newBenchEncapCmd())
	return cmd
}

// reportFlags are the output flags every bench command has.
type reportFlags struct {
	output string
	svg    string
}

func (rf *reportFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVarP(&rf.output, "output", "o", "table", "output format: table, json or markdown")
	cmd.Flags().StringVar(&rf.svg, "svg", "", "also write a chart to this SVG file")
}

// write prints a report and draws its chart.
func (rf *reportFlags) write(cmd *cobra.Command, r *bench.Report) error {
	if err := r.Write(cmd.OutOrStdout(), rf.output); err != nil {
		return err
	}
	if rf.svg == "" {
		return nil
	}
	if r.Chart == nil {
		return fmt.Errorf("--svg: this report has no chart")
	}
	f, err := os.Create(rf.svg)
	if err != nil {
		return err
	}
	if err := r.Chart.WriteSVG(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
