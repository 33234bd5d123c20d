// Package source is where Kubernetes objects come into kdive. Everything
// downstream reads them through client-go informers on a
// kubernetes.Interface; the sources differ only in what backs that
// interface: a real API server (kubeconfig or in-cluster), or a lab's
// store (subpackage labstore). Nothing below this package knows which one
// is in use.
package source
