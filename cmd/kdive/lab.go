package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/lab"
)

func newLabCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "lab",
		Short: "Build and inspect a multi-node cluster made of network namespaces on this machine",
		Long: `A lab is a cluster made of network namespaces: nodes in subnets joined by a
router that, like a cloud VPC, drops pod-addressed packets between subnets, and
an external client behind the router. Nothing of a lab touches the host's own
network. State lives under /run/kdive/labs/NAME/.`,
	}
	cmd.AddCommand(newLabUpCmd(), newLabDownCmd(), newLabListCmd(), newLabStatusCmd(), newLabExecCmd(),
		newLabApplyCmd(), newLabDeleteCmd())
	cmd.AddCommand(newLabRestartCmd(), newLabKubeconfigCmd(), newLabCloudCmd())
	return cmd
}

func newLabKubeconfigCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "kubeconfig NAME",
		Short: "Print the path of a Kubernetes lab's admin kubeconfig, usable from this machine",
		Long: `Print the path of the admin kubeconfig of a Kubernetes lab (lab up
--kubernetes). Its server is a forwarder on this machine's 127.0.0.1 into the
lab's API server, as kind maps its API port:

  bin/kubectl --kubeconfig "$(kdive lab kubeconfig kdive)" get pods -A -o wide`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := lab.Load(args[0])
			if err != nil {
				return err
			}
			if s.Plan.Kubernetes == nil {
				return fmt.Errorf("lab %s is not a Kubernetes lab (lab up --kubernetes makes one)", args[0])
			}
			fmt.Fprintln(cmd.OutOrStdout(), s.Plan.KubeconfigFile())
			return nil
		},
	}
}

// newLabCloudCmd is the lab's cloud controller, which lab up starts on a
// Kubernetes lab's control-plane host with the API forwarder's listener
// as fd 3.
func newLabCloudCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "cloud NAME",
		Short:  "A Kubernetes lab's cloud: LoadBalancer IPs, the router, the API forwarder (lab up starts it)",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			var ln net.Listener
			if f := os.NewFile(3, "api-listener"); f != nil {
				if l, err := net.FileListener(f); err == nil {
					ln = l
				}
				f.Close()
			}
			return lab.RunCloud(ctx, args[0], ln, slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil)))
		},
	}
}

func newLabUpCmd() *cobra.Command {
	var (
		name, preset, file string
		iface, proxyMode   string
		print, kubernetes  bool
		timeout            time.Duration
	)
	cmd := &cobra.Command{
		Use:   "up [--name NAME] [--preset A|B|C|D] [-f lab.yaml]",
		Short: "Bring up a lab from a preset (default D) or a lab file",
		Long: `Bring up a lab from a preset or a lab file (kind: Lab). The presets are the
reference clusters:

  A  routed veths, IPIP only across subnets, IPVS        (Calico-style)
  B  routed veths, IPIP always, iptables
  C  kube-bridge, direct in a subnet, IPIP across, iptables (kube-router-style)
  D  routed veths, VXLAN only across subnets, nftables   (the default)

--kubernetes (or spec.kubernetes in a lab file) makes the lab a real
Kubernetes cluster on the same underlay: etcd, kube-apiserver,
kube-controller-manager and kube-scheduler on a control-plane host, containerd
and a kubelet on every node, kdive installed by deploy/kdive.yaml (no
kube-proxy), CoreDNS as kube-system/kube-dns; needs make kubernetes.

--interface and --proxy-mode replace the lab file's modes (a preset in another
mode). --interface none, with --kubernetes, gives the lab the cloud's pod
network instead of kdive's: the CNI reference plugins (bridge, host-local,
portmap) attach pods, the router routes the nodes' pod blocks, and kdive is
the service proxy only.

--print prints the lab file instead of building it: start your own from it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			src, err := labSource(preset, file)
			if err != nil {
				return err
			}
			src.Kubernetes, src.Interface, src.ProxyMode = kubernetes, iface, proxyMode
			if print {
				b, err := src.YAML()
				if err != nil {
					return err
				}
				_, err = cmd.OutOrStdout().Write(b)
				return err
			}
			plan, raw, err := lab.Prepare(name, src)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			bins, err := lab.FindBinaries("")
			if err != nil {
				return err
			}
			st, err := lab.Up(ctx, plan, lab.UpOptions{LabFile: raw, Binaries: bins, Progress: cmd.ErrOrStderr(), Timeout: timeout})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "lab %s is up\n\n", plan.Name)
			return lab.GetStatus(ctx, st).WriteText(cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVar(&name, "name", "", `lab name (default "kdive", or the lab file's metadata.name)`)
	cmd.Flags().StringVar(&preset, "preset", "", "preset: A, B, C or D (default D)")
	cmd.Flags().StringVarP(&file, "filename", "f", "", "lab file (kind: Lab); - reads stdin")
	cmd.Flags().BoolVar(&print, "print", false, "print the lab file and exit")
	cmd.Flags().BoolVar(&kubernetes, "kubernetes", false, "a real Kubernetes cluster: kubelet and containerd on every node, kdive by its manifest")
	cmd.Flags().StringVar(&iface, "interface", "", "replace the lab file's pod network interface: routed, bridge, or none (with --kubernetes: the CNI reference plugins attach pods, kdive is the service proxy only)")
	cmd.Flags().StringVar(&proxyMode, "proxy-mode", "", "replace the lab file's proxy mode: nftables, iptables or ipvs")
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "the longest to wait for any one step (agents' first sync; with --kubernetes the API server, each kubelet, the cluster Ready): default 1m, 3m for the cluster; raise it on a slow or emulated CPU")
	return cmd
}

func labSource(preset, file string) (lab.Source, error) {
	if file == "" {
		if preset == "" {
			preset = lab.DefaultPreset
		}
		if _, err := lab.PresetYAML(preset); err != nil {
			return lab.Source{}, fmt.Errorf("--preset: %w", err)
		}
		return lab.Source{Preset: preset}, nil
	}
	if preset != "" {
		return lab.Source{}, errors.New("--preset and -f are exclusive: a preset is a lab file")
	}
	b, err := readFileOrStdin(file)
	if err != nil {
		return lab.Source{}, fmt.Errorf("lab file: %w", err)
	}
	return lab.Source{File: b, FileName: file}, nil
}

func newLabDownCmd() *cobra.Command {
	var all bool
	cmd := &cobra.Command{
		Use:   "down NAME | --all",
		Short: "Remove a lab: its processes, namespaces, links and files",
		Args: func(cmd *cobra.Command, args []string) error {
			if (all && len(args) == 0) || (!all && len(args) == 1) {
				return nil
			}
			return errors.New("give a lab name or --all")
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if all {
				return lab.DownAll()
			}
			if err := lab.Down(args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "lab %s is down\n", args[0])
			return nil
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "remove every lab, including leftovers of interrupted ones")
	return cmd
}

func newLabListCmd() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the labs on this machine",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			names, err := lab.Names()
			if err != nil {
				return err
			}
			var sts []*lab.Status
			for _, n := range names {
				s, err := lab.Load(n)
				if err != nil {
					fmt.Fprintf(cmd.ErrOrStderr(), "kdive: %v\n", err)
					continue
				}
				sts = append(sts, lab.GetStatus(cmd.Context(), s))
			}
			if output == "json" {
				if sts == nil {
					sts = []*lab.Status{}
				}
				return writeJSON(cmd.OutOrStdout(), sts)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tPRESET\tSTATE\tNODES\tPODS\tSERVICES\tCREATED")
			for _, s := range sts {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%s\n", s.Name, orDash(s.Preset), s.State, len(s.Nodes), len(s.Pods), len(s.Services), s.Created.Format("2006-01-02T15:04:05Z"))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	return cmd
}

func newLabStatusCmd() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "status NAME",
		Short: "Show a lab's nodes, external client, router counters, pods and services",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := lab.Load(args[0])
			if err != nil {
				return err
			}
			st := lab.GetStatus(cmd.Context(), s)
			switch output {
			case "json":
				return writeJSON(cmd.OutOrStdout(), st)
			case "table", "":
				return st.WriteText(cmd.OutOrStdout())
			}
			return fmt.Errorf("--output %q: must be table or json", output)
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	return cmd
}

func newLabExecCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "exec NAME NODE|POD -- CMD [ARGS...]",
		Short: "Run a command inside a lab node's, pod's, the router's or the external client's network namespace",
		Long: `Run a command inside a network namespace of a lab, with stdin, stdout, stderr
and the exit status passed through. The target is a node name, a pod
(namespace/name, or a bare name that is unique), "router" or "external".
In a Kubernetes lab a pod is a real pod (found through the API server), a
node's commands run in its mount namespace too, so "crictl ps" lists that
node's containers, and "control-plane" is the control plane's host.`,
		Args: cobra.MinimumNArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.ArgsLenAtDash() != 2 {
				return errors.New("usage: kdive lab exec NAME NODE|POD -- CMD [ARGS...]")
			}
			s, err := lab.Load(args[0])
			if err != nil {
				return err
			}
			path, err := lab.ExecTarget(s, args[1])
			if err != nil {
				return err
			}
			argv, err := lab.NodeCommand(s, args[1], args[2:])
			if err != nil {
				return err
			}
			return kernel.ExecIn(path, argv)
		},
	}
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func newLabApplyCmd() *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "apply NAME -f objects.yaml",
		Short: "Apply Kubernetes objects (Pod, Deployment, Service) to a running lab",
		Long: `Apply Kubernetes objects to a running lab, like kubectl apply: new pods are
scheduled (spec.nodeName, else round-robin over the nodes matching the
nodeSelector) and attached through CNI; a Deployment's replica count adds or
removes pods; a Service keeps its cluster IP and node ports. Everything is
validated first: an invalid object changes nothing. The lab runs no
controllers: pod template changes of a Deployment apply to new pods only.

In a Kubernetes lab (lab up --kubernetes) the same objects, validated the same
way, go to its API server (server-side apply, missing namespaces created),
whose controllers, scheduler and kubelets do the rest; containers of image
kdive-echo run kdive's echo server.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if file == "" {
				return errors.New("-f objects.yaml is required (- reads stdin)")
			}
			b, err := readFileOrStdin(file)
			if err != nil {
				return err
			}
			bins, err := lab.FindBinaries("")
			if err != nil {
				return err
			}
			changes, err := lab.Apply(cmd.Context(), args[0], b, bins)
			printLines(cmd.OutOrStdout(), changes)
			return err
		},
	}
	cmd.Flags().StringVarP(&file, "filename", "f", "", "Kubernetes YAML with Pods, Deployments and Services; - reads stdin")
	return cmd
}

func newLabDeleteCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "delete NAME KIND/NAME",
		Short: "Delete a pod, deployment or service from a running lab (KIND/NAME or KIND/NAMESPACE/NAME)",
		Long: `Delete a pod, deployment (with its pods) or service from a running lab, given
as KIND/NAME or KIND/NAMESPACE/NAME (namespace default). In a Kubernetes lab
the API server deletes it; the command returns once it is gone.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			changes, err := lab.Delete(cmd.Context(), args[0], args[1])
			printLines(cmd.OutOrStdout(), changes)
			return err
		},
	}
}

func printLines(w io.Writer, lines []string) {
	for _, l := range lines {
		fmt.Fprintln(w, l)
	}
}

func readFileOrStdin(file string) ([]byte, error) {
	if file == "-" {
		return io.ReadAll(os.Stdin)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", file, err)
	}
	return b, nil
}
