package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"

	"github.com/kdive/kdive/internal/cni"
	"github.com/kdive/kdive/internal/fileutil"
	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/source"
)

// InstallOptions say what `kdive install-cni` (the DaemonSet's init step)
// installs.
type InstallOptions struct {
	// Plugin is the kdive-cni binary to install; BinDir is the node's
	// CNI_PATH directory, where it becomes cni.PluginType.
	Plugin, BinDir string
	// Wait bounds how long to wait for this node's Node object to have an
	// InternalIP and a pod CIDR (the controller-manager assigns it).
	Wait time.Duration
	// NetNS is the node's network namespace; default the process's own.
	NetNS *kernel.NetNS
}

// InstallCNI installs the plugin binary atomically (a temporary file in
// BinDir, synced, then renamed over cni.PluginType, so a runtime never runs
// a half-written plugin), then writes the node's conflist exactly as the
// agent will (atomically too), once this node's Node has a pod CIDR. The
// agent rewrites the conflist whenever the node's settings change; this
// step only makes the node's network ready before the agent's first sync.
func InstallCNI(ctx context.Context, cfg *Configuration, o InstallOptions) error {
	if err := installBinary(o.Plugin, filepath.Join(o.BinDir, cni.PluginType)); err != nil {
		return err
	}
	ns := o.NetNS
	if ns == nil {
		var err error
		if ns, err = kernel.OpenNetNS("/proc/self/ns/net"); err != nil {
			return err
		}
		defer ns.Close()
	}
	ctx, cancel := context.WithTimeout(ctx, o.Wait)
	defer cancel()
	client, err := source.NewClient(ctx, source.Connection{
		Kubeconfig: cfg.ClientConnection.Kubeconfig, LabStore: cfg.ClientConnection.LabStore,
		APIServer: cfg.ClientConnection.APIServer,
	}, nil)
	if err != nil {
		return err
	}
	pn := &podnetRunner{a: New(Options{Config: cfg, Client: client, NetNS: ns})}
	// An informer (list, then watch), as the ClusterRole grants the agent
	// list and watch only. A lab's store ignores the field selector, so the
	// lister is asked for the name.
	factory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithTweakListOptions(func(lo *metav1.ListOptions) {
		lo.FieldSelector = fields.OneTermEqualSelector("metadata.name", cfg.NodeName).String()
	}))
	nodes := factory.Core().V1().Nodes()
	lister := nodes.Lister()
	nodes.Informer() // registers it before Start
	stop := make(chan struct{})
	factory.Start(stop)
	defer func() { close(stop); factory.Shutdown() }()
	var last error
	for {
		n, err := lister.Get(cfg.NodeName)
		if err == nil {
			local, problem := source.Node(n)
			if problem == "" {
				up, err := pn.findUplink(local.IP())
				if err != nil {
					return err
				}
				return pn.writeConfList(local, up)
			}
			err = fmt.Errorf("node %s: %s", cfg.NodeName, problem)
		} else if apierrors.IsNotFound(err) {
			err = fmt.Errorf("node %s: no Node object of that name", cfg.NodeName)
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("install CNI config: %w (waited %s)", last, o.Wait)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// installBinary copies src to dst atomically with mode 0755.
func installBinary(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("install %s: %w", dst, err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return fmt.Errorf("install %s: %w", dst, err)
	}
	return fileutil.WriteAtomic(dst, b, 0o755)
}
