#!/usr/bin/env bash
# Installs what kdive's build, tests and demo need on a Debian machine, and
# does nothing when everything is already there (so `make test` stays fast).
set -euo pipefail
# runc and util-linux (nsenter) run the lab's Kubernetes nodes (make
# kubernetes builds the rest); busybox-static is also the shell of the
# images it builds; bind9-dnsutils, netcat-openbsd, socat, wget and iperf
# give the e2e tests' images (agnhost, glibc-dns-testing) the dig, nc,
# socat, wget and iperf (2) their upstream Alpine images carry; strace
# shows the tests which file system calls make state durable.
pkgs=(iproute2 nftables iptables ipset conntrack ipvsadm curl kmod
      qemu-system-x86 linux-image-amd64 busybox-static runc util-linux
      bind9-dnsutils netcat-openbsd socat wget iperf strace)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" != 0 ]; then
    echo "kdive needs these Debian packages (run as root to install them): ${missing[*]}" >&2
    exit 1
  fi
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v go >/dev/null || { echo "kdive needs Go 1.26 on PATH (/usr/local/go/bin)" >&2; exit 1; }
go mod download
