package main

import (
	"encoding/json"
	"errors"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/kdive/kdive/internal/diag"
	"github.com/kdive/kdive/internal/model"
)

func newTraceCmd() *cobra.Command {
	var (
		req     diag.TraceRequest
		proto   string
		output  string
		minimal bool
	)
	cmd := &cobra.Command{
		Use:   "trace --lab LAB --from POD|NODE|external --to SERVICE|POD|IP[:PORT]",
		Short: "Trace a packet's path through the kernel's actual routes, load balancing and encapsulation",
		Long: `Trace predicts where a connection goes from the kernel's actual state, not the
agent's intentions: the route lookup in the source's namespace, the load
balancing on the node whose hooks see it first (the proxy mode's rules or IPVS
services read back from the kernel: the matched rule, every endpoint with its
probability, affinity, DNAT, masquerade or not), the route on the node to each
endpoint and the encapsulation (direct, IPIP or VXLAN with the outer addresses,
same subnet or through the router), decapsulation on the receiving node,
delivery to the pod, and the reply's way back.

A pod is namespace/name or a bare name that is unique; a service is
namespace/name[:port]; a pod without a port means port 8080 (the lab's echo
servers). --probe also sends one real request and reports which pod answered
and what conntrack recorded, marking where prediction and observation differ.
Tracing works on labs (--lab); on a live node it is not available yet.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if req.Lab == "" {
				return errors.New("trace needs --lab (tracing a live node is not available yet)")
			}
			if req.From == "" || req.To == "" {
				return errors.New("trace needs --from and --to")
			}
			switch p := model.Protocol(strings.ToUpper(proto)); p {
			case model.ProtocolTCP, model.ProtocolUDP:
				req.Proto = p
			default:
				return errors.New("--proto: want tcp or udp, not " + proto)
			}
			req.Inspect = diag.InspectProxy
			rep, err := diag.Trace(cmd.Context(), req)
			if err != nil {
				return err
			}
			switch {
			case output == "json":
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(rep)
			case minimal:
				return rep.WriteMinimal(cmd.OutOrStdout())
			case output == "text":
				return rep.WriteText(cmd.OutOrStdout())
			}
			return errors.New("--output: want text or json, not " + output)
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Lab, "lab", "", "lab to trace in")
	f.StringVar(&req.From, "from", "", "source: pod (namespace/name or a unique name), node or external")
	f.StringVar(&req.To, "to", "", "destination: service (namespace/name[:port]), pod[:port] or IP[:PORT]")
	f.StringVar(&proto, "proto", "tcp", "protocol: tcp or udp")
	f.BoolVar(&req.Probe, "probe", false, "also send one real request and compare")
	f.BoolVar(&minimal, "minimal", false, "the short stable form: a line per endpoint")
	f.StringVarP(&output, "output", "o", "text", "output format: text or json")
	return cmd
}
