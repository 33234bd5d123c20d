package source

import (
	"context"
	"fmt"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kdive/kdive/internal/source/labstore"
)

// Connection says which source to use; at most one field is set. With
// none, the in-cluster configuration (service account) is used.
type Connection struct {
	Kubeconfig string
	LabStore   string
}

// NewClient returns the kubernetes.Interface for a connection. For a lab
// store it starts following the store until ctx ends; onError (may be
// nil) hears about store read errors, which are retried.
func NewClient(ctx context.Context, c Connection, onError func(error)) (kubernetes.Interface, error) {
	if c.LabStore != "" {
		m := labstore.NewMirror(labstore.Open(c.LabStore))
		if err := m.Start(ctx, onError); err != nil {
			return nil, fmt.Errorf("lab store %s: %w", c.LabStore, err)
		}
		return m.Client(), nil
	}
	var (
		cfg *rest.Config
		err error
	)
	if c.Kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	} else {
		cfg, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client configuration: %w", err)
	}
	cfg.UserAgent = "kdive-agent"
	return kubernetes.NewForConfig(cfg)
}
