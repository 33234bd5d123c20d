package main

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/kdive/kdive/internal/verify"
)

func newProbeCmd() *cobra.Command {
	var r verify.ProbeRequest
	cmd := &cobra.Command{
		Use:   "probe [flags] http URL | udp HOST:PORT | idle",
		Short: "Send kdive verify's requests from inside a pod (verify runs it there through exec)",
		Long: `Probe sends requests from where it runs and prints one JSON object per request:

  {"code":200,"body":"<base64>"}       an HTTP answer
  {"body":"<base64>"}                  a datagram answered
  {"error":"no answer within 3s","timeout":true}

Each HTTP request is a new connection, so a new load-balancing decision; a
UDP request is up to three datagrams until one is answered. kdive verify runs
it through the API server's exec in the pods it deploys on a cluster; idle
waits for SIGTERM, the process of verify's host-network pods.`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			switch {
			case args[0] == "idle" && len(args) == 1:
				ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
				defer stop()
				<-ctx.Done()
				return nil
			case args[0] == "http" && len(args) == 2:
				r.URL = args[1]
			case args[0] == "udp" && len(args) == 2:
				r.UDPAddr = args[1]
			default:
				return fmt.Errorf("probe %s: want http URL, udp HOST:PORT or idle", strings.Join(args, " "))
			}
			var d net.Dialer
			enc := json.NewEncoder(cmd.OutOrStdout())
			for _, a := range verify.Probe(cmd.Context(), d.DialContext, r) {
				if err := enc.Encode(a); err != nil {
					return err
				}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.DurationVar(&r.Timeout, "timeout", 3*time.Second, "timeout of each request")
	f.IntVar(&r.Count, "count", 1, "number of requests")
	f.IntVar(&r.Parallel, "parallel", 1, "requests in flight at once")
	f.IntVar(&r.BodySize, "body-size", 0, "POST a body of this many bytes instead of a GET")
	return cmd
}
