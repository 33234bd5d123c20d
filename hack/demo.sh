#!/usr/bin/env bash
# The demo `make demo` runs: bring up the default lab, show it, send traffic
# across it, and tear it down again (also when a step fails).
set -euo pipefail
cd "$(dirname "$0")/.."
kdive=bin/kdive
lab=kdive

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

$kdive lab down "$lab" >/dev/null 2>&1 || true
trap '$kdive lab down "$lab"' EXIT

step "kdive lab up (preset D: routed veths, VXLAN across subnets, nftables)"
$kdive lab up --name "$lab"

step "an echo server on node-3 (subnet zone-b)"
$kdive lab exec "$lab" node-3 -- $kdive echo --node node-3 --pod demo --namespace default --listen tcp:8080 2>/dev/null &
for _ in $(seq 50); do
  $kdive lab exec "$lab" node-3 -- curl -s -o /dev/null --max-time 1 http://127.0.0.1:8080/ && break
  sleep 0.1
done

step "node-2 -> node-3: across subnets, through the router"
$kdive lab exec "$lab" node-2 -- curl -s --max-time 3 http://172.20.2.10:8080/

step "external client -> node-3"
$kdive lab exec "$lab" external -- curl -s --max-time 3 http://172.20.2.10:8080/

step "a pod address (10.0.1.5 on node-1) -> node-3: the router's VPC check drops it"
$kdive lab exec "$lab" node-1 -- ip addr add 10.0.1.5/32 dev lo
if $kdive lab exec "$lab" node-1 -- curl -s --max-time 2 --interface 10.0.1.5 http://172.20.2.10:8080/; then
  echo "unexpected: the packet crossed the router" >&2
  exit 1
fi
echo "(no answer, as in a cloud VPC: pod traffic must be encapsulated between subnets)"

step "kdive lab status $lab"
$kdive lab status "$lab"

step "kdive lab down $lab"
