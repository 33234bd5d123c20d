// Package verify is `kdive verify`: an active connectivity suite in the
// spirit of `cilium connectivity test` and Kubernetes' sig-network e2e
// tests, run against a lab.
//
// It applies its own workload into the lab (namespace kdive-verify, see
// workload.go: echo pods on every node, one pod pinned to the first node,
// and a ClusterIP, NodePort, LoadBalancer and session-affinity Service),
// waits until every node's agent has synced it, sends real traffic from
// pods, nodes and the lab's external client, and reports one named Result
// per check with the reason of each failure. Each check is bounded: fixed
// request counts, a timeout of a few seconds per request.
//
// Traffic is only ever sent from and to namespaces of the lab: every
// connection is dialed inside a lab namespace through kernel.NetNS's
// DialContext (an http.Transport dials on goroutines of its own, which
// would be in the root namespace; a transport given DialContext never is).
//
// The consistency check compares each node's load-balancing table, read
// back from the kernel through Options.Inspect, with what the API objects
// ask for (expected.go, the agent's own computation). The package does not
// import the proxy backends: the caller injects the reader.
//
// It does not change kernel state itself; it changes the lab only through
// lab.Apply and lab.Delete, and removes its workload again unless told to
// keep it.
package verify
