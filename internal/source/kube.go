package source

import (
	"context"
	"fmt"
	"os"

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
	// APIServer replaces the in-cluster configuration's address (the
	// kubernetes Service's cluster IP) with this URL; the service
	// account's token and CA stay.
	APIServer string
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
		cfg, err = inCluster(c.APIServer)
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client configuration: %w", err)
	}
	cfg.UserAgent = "kdive-agent"
	return kubernetes.NewForConfig(cfg)
}

// inCluster is the service account's configuration (its token and CA,
// as rest.InClusterConfig reads them), with the API server at apiServer
// when it is set instead of $KUBERNETES_SERVICE_HOST.
func inCluster(apiServer string) (*rest.Config, error) {
	if apiServer == "" {
		return rest.InClusterConfig()
	}
	const dir = "/var/run/secrets/kubernetes.io/serviceaccount/"
	if _, err := os.Stat(dir + "token"); err != nil {
		return nil, fmt.Errorf("in-cluster configuration for %s: %w", apiServer, err)
	}
	return &rest.Config{
		Host:            apiServer,
		TLSClientConfig: rest.TLSClientConfig{CAFile: dir + "ca.crt"},
		BearerTokenFile: dir + "token",
	}, nil
}
