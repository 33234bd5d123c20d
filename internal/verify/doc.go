// Package verify is `kdive verify`: an active connectivity suite in the
// spirit of `cilium connectivity test` and Kubernetes' sig-network e2e
// tests, run against a lab.
//
// It applies its own workload into the lab (namespace kdive-verify, see
// workload.go: two echo pods on every node and one more on the first, each
// naming its node, and a ClusterIP, NodePort, LoadBalancer and
// session-affinity Service), waits until it is in place and every node's
// agent has synced it, sends real traffic from pods, nodes and the lab's
// external client, and reports one named Result per check with the reason
// of each failure. Each check is bounded: fixed request counts, a timeout
// of a few seconds per request.
//
// It works the same on a plain lab and on a Kubernetes lab (lab up
// --kubernetes): the lab's objects come from lab.Snapshot (the lab's store,
// or the API server) and a pod's network namespace from lab.PodNetNSPath.
// A plain lab's apply returns with the workload in place; a real cluster's
// does not, so the suite first waits (within Options.SyncTimeout) until the
// workload's pods are running and ready, their EndpointSlices list exactly
// them and the LoadBalancer Services have their ingress IP from the lab's
// cloud, and then for the agents (the kdive DaemonSet's, whose /healthz is
// in the node's namespace as a lab agent's is) to sync after the last
// change. Pods name their node, so no scheduler decides where they run.
//
// Traffic is only ever sent from and to namespaces of the lab: every
// connection is dialed inside a lab namespace through kernel.NetNS's
// DialContext (an http.Transport dials on goroutines of its own, which
// would be in the root namespace; a transport given DialContext never is).
//
// The consistency check compares each node's load-balancing table, read
// back from the kernel through Options.Inspect, with what the API objects
// (lab.Snapshot: every Service and EndpointSlice of the lab, a Kubernetes
// lab's kubernetes and kube-dns included) ask for (expected.go, the
// agent's own computation). The package does not
// import the proxy backends: the caller injects the reader.
//
// It does not change kernel state itself; it changes the lab only through
// lab.Apply and lab.Delete, and removes its workload again unless told to
// keep it.
package verify
