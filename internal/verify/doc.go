// Package verify is `kdive verify`: an active connectivity suite in the
// spirit of `cilium connectivity test` and Kubernetes' sig-network e2e
// tests, run against a lab or a cluster.
//
// It applies its own workload (namespace kdive-verify, see workload.go:
// two echo pods on every node and one more on the first, each naming its
// node, and a ClusterIP, NodePort, LoadBalancer and session-affinity
// Service), waits until it is in place and every node's proxy has synced
// it, sends real traffic from pods and nodes (and in a lab from its
// external client), and reports one named Result per check with the
// reason of each failure. Each check is bounded: fixed request counts, a
// timeout of a few seconds per request.
//
// The suite runs on a target (target.go): a lab or a cluster. Traffic
// starts at an origin, and every origin sends the same way, through Probe
// (probe.go) with a DialFunc of where it is:
//
//   - A lab (Options.Lab, plain or Kubernetes): the lab's objects come
//     from lab.Snapshot (the lab's store, or the API server), a pod's
//     origin is its network namespace (lab.PodNetNSPath) and a node's its
//     node's namespace, and every connection is dialed inside the
//     namespace through kernel.NetNS's DialContext (an http.Transport
//     dials on goroutines of its own, which would be in the root
//     namespace; a transport given DialContext never is).
//   - A cluster (cluster.go: no Options.Lab, the kubeconfig's), reached
//     only through its API server with client-go. The workload runs
//     kdive's image and adds a host-network pod on every node; an origin
//     is a pod, where Probe runs as `kdive probe`, exec'd through the API
//     server, printing one ProbeAnswer per line. What only a lab has (the
//     external client, the nodes' subnets, the nodes' kernels) is
//     reported skipped with the reason, never guessed.
//
// A plain lab's apply returns with the workload in place; a real
// cluster's does not, so the suite first waits (within
// Options.SyncTimeout) until the workload's pods are running and ready,
// their EndpointSlices list exactly them and (in a lab) the LoadBalancer
// Services have their ingress IP from the lab's cloud, and then for each
// node's proxy to sync after the last change, reading lastUpdated from
// kube-proxy's /healthz (which kdive's agent serves) from the node itself.
// Pods name their node, so no scheduler decides where they run.
//
// Traffic is only ever sent from and to the target's own pods and nodes.
//
// The consistency check (lab only) compares each node's load-balancing
// table, read back from the kernel through Options.Inspect, with what the
// API objects (lab.Snapshot: every Service and EndpointSlice of the lab, a
// Kubernetes lab's kubernetes and kube-dns included) ask for (expected.go,
// the agent's own computation). The package does not import the proxy
// backends: the caller injects the reader.
//
// It does not change kernel state itself; it changes a lab only through
// lab.Apply and lab.Delete and a cluster only in its own namespace, and
// removes its workload again unless told to keep it.
package verify
