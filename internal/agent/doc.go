// Package agent is the node daemon (`kdive agent`): it reads Kubernetes
// objects through client-go informers on a kubernetes.Interface (a real API
// server or a lab's store; see internal/source), computes this node's
// desired pod network, and hands snapshots to the dataplane packages:
// internal/podnet for routes and tunnels, internal/cni for the node's CNI
// network config, and the proxy mode's backend (internal/proxy/...) for
// Services. This node's Pods (a field selector on spec.nodeName) feed only
// a report of IPAM addresses no pod holds; the datapath never waits on them.
// With podNetwork.interface none the agent is the service proxy alone,
// beside another CNI: no pod network, no Pods, and of its Node only the
// InternalIP (no spec.podCIDR, no peers). With the pod network, a node
// whose spec.podCIDR is not assigned yet gets its Services all the same, as
// kube-proxy's would; its pod network waits for the block.
//
// Against a real API server it is tested in kube_test.go (a kube-apiserver
// and etcd from internal/source/kubetest, RBAC with deploy/kdive.yaml's
// ClusterRole); everywhere else through a lab's store.
//
// The two halves are reconcilers (loop.go), each with its own dirty mark,
// backoff and health: the pod network (podnetwork.go), which Node events
// mark, and the service proxy (proxy.go), which Node, Service and
// EndpointSlice events mark, so a Service change never re-runs the pod
// network; NetworkPolicy will be the third. One loop runs them, in that
// order, bounded in frequency: a change syncs its reconcilers no sooner
// than MinSyncPeriod after the previous sync, and every SyncPeriod every
// reconciler re-applies everything anyway, which repairs what someone
// changed by hand. A failed sync is logged (with its part) and retried
// with backoff, as a full sync that takes the changes meanwhile along; the
// other reconciler goes on meanwhile, and the agent keeps serving what it
// last programmed. /healthz is healthy only while neither has a change
// stuck for two sync periods; a pod network waiting for spec.podCIDR
// (ErrNotReady) is not unhealthy. /healthz and /livez answer kube-proxy's
// body alone (their port answers anyone reaching the node); why a part is
// unhealthy, its pending change and last error, is on /status on the
// node-local metrics port.
//
// The agent is the only place that logs: libraries return errors.
package agent
