#!/usr/bin/env bash
# The demo `make demo` runs: bring up the default lab, show its pods and a
# node's routes, send traffic between pods across nodes and subnets, show
# the VPC check that makes encapsulation necessary, show the load-balancing
# table, verify the lab with real traffic (kdive verify), trace a service
# request across subnets, and tear it all down again (also when a step fails).
set -euo pipefail
cd "$(dirname "$0")/.."
kdive=bin/kdive
lab=kdive

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
podip() { $kdive lab status "$lab" | awk -v p="$1" '$1==p {print $3}'; }
svcip() { $kdive lab status "$lab" | awk -v s="$1" '$1==s {print $3}'; }

$kdive lab down "$lab" >/dev/null 2>&1 || true
trap '$kdive lab down "$lab"' EXIT

step "kdive lab up (preset D: routed veths, VXLAN across subnets, nftables)"
$kdive lab up --name "$lab"

step "node-1's routes: its blackholed block, a /32 per pod, node-2 direct, node-3 over VXLAN"
$kdive lab exec "$lab" node-1 -- ip route

step "pod coredns-0 (node-1, zone-a) -> ingress-1 (node-2, zone-a): same subnet, direct over eth0"
$kdive lab exec "$lab" kube-system/coredns-0 -- curl -s --max-time 3 "http://$(podip default/ingress-1):8080/"

step "pod coredns-0 (node-1, zone-a) -> ingress-2 (node-3, zone-b): across subnets, VXLAN"
$kdive lab exec "$lab" kube-system/coredns-0 -- curl -s --max-time 3 "http://$(podip default/ingress-2):8080/"

step "service default/ingress (ClusterIP $(svcip default/ingress)): load-balanced over its three pods"
for _ in 1 2 3 4 5 6; do
  $kdive lab exec "$lab" kube-system/coredns-0 -- curl -s --max-time 3 "http://$(svcip default/ingress):80/"
done

step "NodePort 30080 on node-3 from the external client: masqueraded, the pod sees one of node-3's addresses"
$kdive lab exec "$lab" external -- curl -s --max-time 3 http://172.20.2.10:30080/

step "kube-dns over UDP from a pod: $(svcip kube-system/kube-dns):53"
$kdive lab exec "$lab" default/ingress-0 -- bash -c "exec 3<>/dev/udp/$(svcip kube-system/kube-dns)/53; echo q >&3; timeout 2 head -n1 <&3"

step "a pod address sent unencapsulated across subnets: the router's VPC check drops it"
$kdive lab exec "$lab" node-3 -- $kdive echo --node node-3 --listen tcp:9090 2>/dev/null &
for _ in $(seq 50); do
  $kdive lab exec "$lab" node-3 -- curl -s -o /dev/null --max-time 1 http://127.0.0.1:9090/ && break
  sleep 0.1
done
echo "node-1 -> node-3 from node-1's own address:"
$kdive lab exec "$lab" node-1 -- curl -s --max-time 3 http://172.20.2.10:9090/
echo "node-1 -> node-3 from a pod address (10.0.1.250), not encapsulated:"
$kdive lab exec "$lab" node-1 -- ip addr add 10.0.1.250/32 dev lo
if $kdive lab exec "$lab" node-1 -- curl -s --max-time 2 --interface 10.0.1.250 http://172.20.2.10:9090/; then
  echo "unexpected: the packet crossed the router" >&2
  exit 1
fi
echo "(no answer: in a cloud VPC pod traffic must be encapsulated between subnets)"

step "kdive lab status $lab"
$kdive lab status "$lab"

step "kdive show lb --lab $lab --node node-1: the load-balancing table read back from the kernel"
$kdive show lb --lab "$lab" --node node-1

step "kdive verify --lab $lab: pod, node and external traffic, services, MTU, load balancing, kernel vs API objects"
$kdive verify --lab "$lab"

step "kdive trace: coredns-0 (node-1, zone-a) -> service default/ingress, every endpoint's path, checked by a real request"
$kdive trace --lab "$lab" --from kube-system/coredns-0 --to default/ingress:http --probe

step "kdive lab down $lab"
