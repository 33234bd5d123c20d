// Package proxy is kdive's service proxy core, shared by every mode: it
// tracks Services and EndpointSlices, turns them into this node's Desired
// snapshot (service ports with the endpoints each kind of traffic uses,
// decided here once, as upstream kube-proxy's CategorizeEndpoints does),
// and hands it to a Backend (subpackages nftables, iptables, ipvs) that
// renders and applies it.
//
// Semantics decided here, not in the backends: which endpoints serve
// cluster-IP traffic (internalTrafficPolicy), which serve NodePort, external
// and LoadBalancer traffic (externalTrafficPolicy), the fallback to
// serving-terminating endpoints, topology hints (trafficDistribution
// PreferClose), REJECT versus DROP when a packet has no endpoint
// (Port.HasEndpoints), and the addresses NodePorts and health check node
// ports answer on (NodePortIPs, HealthCheckIPs; HealthServer serves the
// latter). The subpackage proxytest holds the packet-flow case
// table every backend must pass; proxytest/bed sends it through a
// backend's rules in real network namespaces.
//
// Change detection is the Tracker's alone: it recomputes the services
// events marked, compares each with what it computed before and names the
// ports that differ in Desired.Changed (nil when the node or the settings
// changed, so every port resolves anew), in one canonical order
// (model.ServicePortName.Compare). Backends trust it and keep no copy of
// their input to compare; Desired.Resync (the agent's periodic resync)
// asks them to check the kernel's copy for drift as well.
//
// The other direction, kernel to meaning, is lbview.go: each backend's
// Inspect reads what the kernel holds back into one mode-independent
// LBTable (service ports, their addresses, endpoints with their share of
// new connections, affinity, policies, counters) and an Inspection whose
// Trace runs the backend's tracer over the kernel's state. ExpectedLB is
// what a Desired must read back as and CompareLB lists the differences:
// `kdive show lb`, `kdive trace` and `kdive verify`'s consistency check
// stand on them.
package proxy
