// Package model holds the plain types of kdive's desired state: nodes with
// their pod blocks and addresses (one Node for the pod network and the
// service proxy alike), the pod network's settings, and services with
// their ports and endpoints. It imports neither client-go nor
// netlink: state sources translate Kubernetes objects into these types, and
// the dataplane packages consume them.
package model
