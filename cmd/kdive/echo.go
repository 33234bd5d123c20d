package main

import (
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/kdive/kdive/internal/echo"
)

func newEchoCmd() *cobra.Command {
	var (
		listens []string
		id      = echo.IdentityFromEnv()
	)
	cmd := &cobra.Command{
		Use:   "echo [--listen [tcp:|udp:][HOST:]PORT ...]",
		Short: "Run the test server lab pods run: HTTP on TCP ports, datagram echo on UDP ports",
		Long: `Run the test server that lab pods run. Every TCP listener answers any HTTP
request, and every UDP listener any datagram, with one JSON object:

  {"pod":NAME,"namespace":NS,"node":NODE,"podIP":IP,"client":"IP:PORT"}

where client is the source address the server saw, so a client can tell which
endpoint answered and whether its source IP was preserved. The identity comes
from the flags, else from POD_NAME, POD_NAMESPACE, NODE_NAME and POD_IP.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			opts := echo.Options{Identity: id, Logger: slog.New(slog.NewTextHandler(os.Stderr, nil))}
			if len(listens) == 0 {
				listens = []string{"tcp:8080"}
			}
			for _, l := range listens {
				ls, err := echo.ParseListen(l)
				if err != nil {
					return err
				}
				opts.Listen = append(opts.Listen, ls)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return echo.Run(ctx, opts)
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&listens, "listen", nil, "address to serve, [tcp:|udp:][HOST:]PORT; repeatable (default tcp:8080)")
	f.StringVar(&id.Pod, "pod", id.Pod, "pod name to report (default $POD_NAME)")
	f.StringVar(&id.Namespace, "namespace", id.Namespace, "pod namespace to report (default $POD_NAMESPACE)")
	f.StringVar(&id.Node, "node", id.Node, "node name to report (default $NODE_NAME)")
	f.StringVar(&id.PodIP, "pod-ip", id.PodIP, "pod IP to report (default $POD_IP, else the address the request arrived on)")
	return cmd
}
