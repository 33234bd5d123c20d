// Package k8s writes what a real Kubernetes control plane and node need
// to start in a lab: the cluster's PKI and tokens, kubeconfigs, the
// kubelet's and containerd's configuration files, and each component's
// command line. It only renders files and arguments; internal/lab starts
// the processes in the lab's namespaces (see internal/lab/kubernetes.go).
//
// Authentication in a Kubernetes lab: one CA signs the API server's
// serving certificate and its client certificate towards kubelets;
// people and components authenticate with static tokens (admin in
// system:masters, the controller-manager and scheduler as their
// system:kube-* users, each kubelet as system:node:NAME in system:nodes,
// which the Node authorizer and NodeRestriction admission expect).
// Pods use service-account tokens signed with the lab's key.
package k8s
