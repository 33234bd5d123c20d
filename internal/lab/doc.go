// Package lab builds a multi-node cluster out of network namespaces on one
// Linux machine, so kdive runs with no Kubernetes installed.
//
// A lab is described by a lab file (kind: Lab, see spec.go; the presets A-D
// are embedded lab files). NewPlan validates the file and decides every
// address and name, without touching the kernel; Up builds the plan through
// internal/kernel and records it under /run/kdive/labs/NAME/; Down removes
// every namespace, link, process and file of the lab.
//
// The underlay (underlay.go) models a cloud VPC: each node is a namespace
// whose eth0 sits in a subnet; the nodes of a subnet share an L2 bridge,
// which lives in the router namespace and holds the subnet's gateway
// address; the router joins the subnets and an external client namespace.
// Like a VPC's source/destination check, the router forwards a packet only
// when its source MAC and IP belong to the same lab host and its destination
// is a lab host; everything else (pod addresses above all) is dropped and
// counted, so pod traffic crosses subnets only encapsulated. Nothing of a
// lab connects to the host's root namespace and no lab namespace has a
// default route.
//
// On the underlay the lab runs a small cluster (cluster.go, pods.go): its
// control plane writes Nodes (with pod blocks), Pods (scheduled) and
// Services (with cluster IPs and node ports) to the lab's store
// (internal/source/labstore); every node runs `kdive agent` in its
// namespace, reading that store through informers; every pod is a
// namespace attached by invoking kdive-cni through libcni inside its node's
// namespace, as containerd would, and runs `kdive echo` on its container
// ports. Apply and Delete (apply.go) change a running lab like kubectl.
// Up checks the kernel features a lab needs first (presets A-C need ipip).
//
// A Kubernetes lab (spec.kubernetes, kubernetes*.go) runs a real cluster on
// the same underlay instead. What tools read of a running lab of either
// kind comes from view.go: Snapshot (its Nodes, Pods, Services and
// EndpointSlices: the store, or the API server), PodNetNSPath (a pod's
// network namespace), LastChange, and the node paths of paths.go; Apply
// and Delete of a Kubernetes lab go through its API server (apply_kube.go).
// Its router routes the nodes' pod blocks for the control plane, and with
// podNetwork.interface none for the pods too: the cloud's pod network, the
// CNI reference plugins on each node, kdive as the service proxy only
// (kubernetes_podroutes.go).
//
// Naming: lab L's namespaces are kdive-L.<node>, kdive-L.router,
// kdive-L.external and kdive-L.pod.<namespace>.<name>; the underlay links
// carry the ifalias "kdive-lab:L"; lab processes run with KDIVE_LAB=L.
package lab
