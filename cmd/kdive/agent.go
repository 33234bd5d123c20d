package main

import (
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/kdive/kdive/internal/agent"
	"github.com/kdive/kdive/internal/cni"
	"github.com/kdive/kdive/internal/model"
)

func newAgentCmd() *cobra.Command {
	var (
		af      agentFlags
		verbose bool
		cleanup bool
	)
	cmd := &cobra.Command{
		Use:   "agent [--config FILE] [flags]",
		Short: "Run the node agent: the node's CNI config, pod network routes and tunnels, and the service proxy",
		Long: `Run the node agent, one per node. It reads Nodes, Services, EndpointSlices
and this node's Pods through client-go informers (from an API server with
--kubeconfig or in-cluster, or from a lab's store with --lab-store), writes the
node's CNI network config (10-kdive.conflist), keeps the node's routes and
tunnels as the pod network mode says, and load-balances Services in the proxy
mode (nftables, iptables, ipvs). Health on :10256 (/healthz, /livez) and
metrics on 127.0.0.1:10249 (/metrics) as kube-proxy serves them; why the
agent is unhealthy on 127.0.0.1:10249/status (node-local). SIGTERM
leaves the datapath in place for the next agent to adopt.

Configuration comes from --config (kind: AgentConfiguration); flags override
its fields.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := af.load(cmd.Flags())
			if err != nil {
				return err
			}
			level := slog.LevelInfo
			if verbose {
				level = slog.LevelDebug
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})).With("node", cfg.NodeName)
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if cleanup {
				if err := agent.Cleanup(ctx, cfg, nil); err != nil {
					return err
				}
				log.Info("removed everything kdive programmed on this node")
				return nil
			}
			return agent.New(agent.Options{Config: cfg, Logger: log}).Run(ctx)
		},
	}
	f := cmd.Flags()
	af.register(f)
	f.BoolVar(&cleanup, "cleanup", false, "remove every rule, route, tunnel and file kdive programmed on this node, then exit (for uninstall)")
	f.BoolVarP(&verbose, "verbose", "v", false, "log every sync")
	return cmd
}

func newInstallCNICmd() *cobra.Command {
	var (
		af   agentFlags
		opts agent.InstallOptions
	)
	cmd := &cobra.Command{
		Use:   "install-cni --bin-dir DIR [--plugin FILE] [agent flags]",
		Short: "Install kdive-cni and the node's CNI network config (the DaemonSet's init step)",
		Long: `Install the CNI plugin and this node's network config, atomically: the plugin
binary is copied to DIR/kdive through a temporary file and a rename, and, once
this node's Node object has an InternalIP and a pod CIDR, 10-kdive.conflist is
written into the CNI config dir exactly as the agent writes it. It takes the
agent's configuration and flags (--config, --kubeconfig, --hostname-override,
--cni-conf-dir, ...). With podNetwork.interface none (kdive as the service
proxy only, beside another CNI) it installs nothing.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := af.load(cmd.Flags())
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if cfg.PodNetwork.Interface == model.InterfaceNone {
				fmt.Fprintln(cmd.OutOrStdout(), "podNetwork.interface is none: another CNI attaches pods; nothing to install")
				return nil
			}
			if err := agent.InstallCNI(ctx, cfg, opts); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "installed %s and %s\n",
				filepath.Join(opts.BinDir, cni.PluginType), filepath.Join(cfg.CNI.ConfDir, cni.ConfListFile))
			return nil
		},
	}
	f := cmd.Flags()
	af.register(f)
	f.StringVar(&opts.BinDir, "bin-dir", "/opt/cni/bin", "the node's CNI plugin directory")
	f.StringVar(&opts.Plugin, "plugin", "/usr/local/bin/kdive-cni", "the kdive-cni binary to install")
	f.DurationVar(&opts.Wait, "wait", 5*time.Minute, "how long to wait for the node's pod CIDR")
	return cmd
}

// agentFlags are the agent configuration's flags, shared by the commands
// that take an AgentConfiguration.
type agentFlags struct {
	configFile string
	fl         agent.Configuration
}

func (af *agentFlags) register(f *pflag.FlagSet) {
	fl := &af.fl
	f.StringVar(&af.configFile, "config", "", "AgentConfiguration file")
	f.StringVar(&fl.NodeName, "node-name", "", "this node's name (default $NODE_NAME, else the hostname)")
	f.StringVar(&fl.NodeName, "hostname-override", "", "same as --node-name, as kube-proxy spells it")
	f.StringVar(&fl.ClientConnection.Kubeconfig, "kubeconfig", "", "kubeconfig of the API server (default: in-cluster)")
	f.StringVar(&fl.ClientConnection.APIServer, "api-server", "", "the API server's URL (https://HOST:PORT) with the in-cluster service account, instead of the kubernetes Service's cluster IP, which works only once a service proxy runs")
	f.StringVar(&fl.ClientConnection.LabStore, "lab-store", "", "a lab's store directory instead of an API server")
	f.BoolVar(&fl.NATOutgoing, "nat-outgoing", false, "masquerade traffic from this node's pods to addresses outside every pod block")
	f.StringVar(&fl.Uplink, "uplink", "", "uplink interface (default: the one holding the node's InternalIP)")
	f.StringVar(&fl.CNI.ConfDir, "cni-conf-dir", "", "where to write 10-kdive.conflist (default "+agent.DefaultConfDir+")")
	f.StringVar(&fl.CNI.DataDir, "cni-data-dir", "", "the CNI plugin's IPAM store (default "+agent.DefaultDataDir+")")
	f.StringVar((*string)(&fl.PodNetwork.Interface), "interface", "", "pod interfaces: routed, bridge, or none (another CNI attaches pods; kdive is the service proxy only) (default routed)")
	f.StringVar((*string)(&fl.PodNetwork.Encap), "encap", "", "between nodes: none, ipip or vxlan (default vxlan)")
	f.StringVar((*string)(&fl.PodNetwork.EncapPolicy), "encap-policy", "", "encapsulate always or cross-subnet (default cross-subnet)")
	f.StringVar(&fl.Proxy.Mode, "proxy-mode", "", "service proxy: nftables, iptables, ipvs or none (default nftables)")
	f.StringVar(&fl.Proxy.IPVS.Scheduler, "ipvs-scheduler", "", "ipvs mode's scheduler: rr, wrr, lc, wlc, lblc, lblcr, sh, dh, sed, nq, mh (default rr)")
	f.StringVar(&fl.Proxy.ClusterCIDR, "cluster-cidr", "", "the cluster's pod range; traffic to cluster IPs from outside it is masqueraded (default: this node's pod CIDR)")
	f.StringSliceVar(&fl.Proxy.NodePortAddresses, "nodeport-addresses", nil, "CIDRs of the node addresses NodePorts answer on (default: the node's primary IP)")
}

// load reads --config and applies the flags that were set over it, then
// defaults and validates the result.
func (af *agentFlags) load(f *pflag.FlagSet) (*agent.Configuration, error) {
	cfg := &agent.Configuration{}
	if af.configFile != "" {
		var err error
		if cfg, err = agent.LoadConfiguration(af.configFile); err != nil {
			return nil, err
		}
	}
	fl := &af.fl
	set := func(name string, dst *string, v string) {
		if f.Changed(name) {
			*dst = v
		}
	}
	set("node-name", &cfg.NodeName, fl.NodeName)
	set("hostname-override", &cfg.NodeName, fl.NodeName)
	set("kubeconfig", &cfg.ClientConnection.Kubeconfig, fl.ClientConnection.Kubeconfig)
	set("api-server", &cfg.ClientConnection.APIServer, fl.ClientConnection.APIServer)
	set("lab-store", &cfg.ClientConnection.LabStore, fl.ClientConnection.LabStore)
	set("uplink", &cfg.Uplink, fl.Uplink)
	if f.Changed("nat-outgoing") {
		cfg.NATOutgoing = fl.NATOutgoing
	}
	set("cni-conf-dir", &cfg.CNI.ConfDir, fl.CNI.ConfDir)
	set("cni-data-dir", &cfg.CNI.DataDir, fl.CNI.DataDir)
	set("proxy-mode", &cfg.Proxy.Mode, fl.Proxy.Mode)
	set("cluster-cidr", &cfg.Proxy.ClusterCIDR, fl.Proxy.ClusterCIDR)
	set("ipvs-scheduler", &cfg.Proxy.IPVS.Scheduler, fl.Proxy.IPVS.Scheduler)
	if f.Changed("nodeport-addresses") {
		cfg.Proxy.NodePortAddresses = fl.Proxy.NodePortAddresses
	}
	if f.Changed("interface") {
		cfg.PodNetwork.Interface = fl.PodNetwork.Interface
	}
	if f.Changed("encap") {
		cfg.PodNetwork.Encap = fl.PodNetwork.Encap
	}
	if f.Changed("encap-policy") {
		cfg.PodNetwork.EncapPolicy = fl.PodNetwork.EncapPolicy
	}
	cfg.Default()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return cfg, nil
}
