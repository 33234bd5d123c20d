# kdive — run as root on Debian. The two commands a newcomer needs:
#   make demo   installs what it needs, builds, and shows the default lab
#   make test   installs what it needs and runs every test (native and VM)

SHELL := /bin/bash
export PATH := /usr/local/go/bin:$(PATH)

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo v0.0.0-dev)
COMMIT  ?= $(shell git rev-parse HEAD 2>/dev/null)
LDFLAGS := -X github.com/kdive/kdive/internal/version.Version=$(VERSION) \
           -X github.com/kdive/kdive/internal/version.Commit=$(COMMIT)

# Tests that need kernel features the development kernel lacks (ipip, ip_vs,
# dummy) run inside the test VM (hack/vmexec), where a missing feature fails
# instead of skipping: the whole kernel package, and elsewhere the tests
# whose names say IPIP or IPVS, or Cgroup2 (the VM has cgroup2 alone, this
# machine the v1 hierarchies). VM tests use the binaries of `make build`.
VM_RUN := IPIP|IPVS|Cgroup2
VM_PKGS := ./internal/agent/ ./internal/podnet/ ./internal/proxy/ipvs/ ./internal/lab/ ./internal/diag/ ./internal/verify/ ./internal/bench/
VMTEST := go test -count=1 -p 1 -timeout 20m -exec $(CURDIR)/hack/vmexec
# A Kubernetes lab in the VM runs alone, in its own target (about 15 minutes
# emulated, too long for make test): three nodes' images live in the VM's
# /run (a tmpfs of half its memory).
VM_KUBE_RUN := Kubernetes.*(IPIP|IPVS)
VMKUBETEST := KDIVE_VM_MEMORY=8192 KDIVE_VM_TIMEOUT=40m go test -count=1 -p 1 -timeout 40m -exec $(CURDIR)/hack/vmexec

.PHONY: all deps build apiserver kubernetes image images demo test test-native bench-smoke test-e2e conformance conformance-wide test-vm test-kubernetes-vm test-faults vet clean

all: build

deps:
	@hack/deps.sh

build:
	go build -trimpath -ldflags '$(LDFLAGS)' -o bin/kdive ./cmd/kdive
	go build -trimpath -ldflags '$(LDFLAGS)' -o bin/kdive-cni ./cmd/kdive-cni
	go build -o bin/kdive-vm ./hack/vm

# Kubernetes from source at released versions, with no Docker and no
# registry: the tests need a real kube-apiserver and etcd
# (internal/source/kubetest); the lab's clusters need the rest, and images
# it imports into each node's containerd (`ctr -n k8s.io images import`)
# instead of pulling them. Each upstream project is a module of its own
# under hack/, whose go.mod pins its version, so the product's go.mod never
# depends on them and they never move each other's dependencies. Everything
# is static. Cold, `make kubernetes` took 45 minutes here on 2 cores shared
# with another build (Kubernetes 30, CoreDNS 4, containerd 3, crictl 1) and
# 3 GB of memory; warm, Go's build cache makes it take 20 seconds.
modversion = $(shell awk 'NF > 1 && $$(NF-1) == "$(2)" { print $$NF; exit }' hack/$(1)/go.mod)
K8S_VERSION        := $(call modversion,kubernetes,k8s.io/kubernetes)
CONTAINERD_VERSION := $(call modversion,containerd,github.com/containerd/containerd/v2)
CRICTL_VERSION     := $(call modversion,crictl,sigs.k8s.io/cri-tools)
COREDNS_VERSION    := $(call modversion,coredns,github.com/coredns/coredns)
# agnhost's version is test/images/agnhost/VERSION in k8s.io/kubernetes (its
# main.Version: no other main package here has one).
AGNHOST_VERSION    := 2.66.1
K8S_LDFLAGS := -X k8s.io/component-base/version.gitVersion=$(K8S_VERSION) \
               -X k8s.io/component-base/version.gitMajor=$(patsubst v%,%,$(word 1,$(subst ., ,$(K8S_VERSION)))) \
               -X k8s.io/component-base/version.gitMinor=$(word 2,$(subst ., ,$(K8S_VERSION))) \
               -X main.Version=$(AGNHOST_VERSION)
K8S_BUILD := cd hack/kubernetes && CGO_ENABLED=0 go build -ldflags '$(K8S_LDFLAGS)' -o $(CURDIR)/bin/
K8S_BINS  := bin/kube-apiserver bin/etcd bin/kube-controller-manager bin/kube-scheduler bin/kubectl bin/kubelet bin/agnhost \
             bin/regression-issue-74839

apiserver:
	$(K8S_BUILD) ./etcd k8s.io/kubernetes/cmd/kube-apiserver

# One `go build` for all of them, so they share its work.
$(K8S_BINS) &: FORCE
	$(K8S_BUILD) ./etcd $(addprefix k8s.io/kubernetes/cmd/,kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet) \
	  k8s.io/kubernetes/test/images/agnhost k8s.io/kubernetes/test/images/regression-issue-74839

bin/containerd bin/containerd-shim-runc-v2 bin/ctr &: FORCE
	cd hack/containerd && CGO_ENABLED=0 go build -tags 'no_btrfs no_devmapper no_zfs' \
	  -ldflags '-X github.com/containerd/containerd/v2/version.Version=$(CONTAINERD_VERSION)' \
	  -o $(CURDIR)/bin/ $(addprefix github.com/containerd/containerd/v2/cmd/,containerd containerd-shim-runc-v2 ctr)

bin/crictl: FORCE
	cd hack/crictl && CGO_ENABLED=0 go build -ldflags '-X sigs.k8s.io/cri-tools/pkg/version.Version=$(CRICTL_VERSION)' \
	  -o $(CURDIR)/bin/ sigs.k8s.io/cri-tools/cmd/crictl

# The CNI reference plugins, for a Kubernetes lab whose pods another CNI
# attaches (podNetwork.interface: none: kdive is the service proxy only).
CNI_PLUGINS_VERSION := $(call modversion,cniplugins,github.com/containernetworking/plugins)
CNI_PLUGINS := bin/cni/bridge bin/cni/host-local bin/cni/loopback bin/cni/portmap
$(CNI_PLUGINS) &: FORCE
	cd hack/cniplugins && CGO_ENABLED=0 go build \
	  -ldflags '-X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$(CNI_PLUGINS_VERSION)' \
	  -o $(CURDIR)/bin/cni/ $(addprefix github.com/containernetworking/plugins/plugins/,ipam/host-local main/bridge main/loopback meta/portmap)

bin/coredns: FORCE
	cd hack/coredns && CGO_ENABLED=0 go build -o $(CURDIR)/bin/ github.com/coredns/coredns

# Images: hack/image's mkimage lays out files of this machine (an ELF file
# with its shared libraries) as one layer and writes a docker-archive. The
# same inputs give the same bytes, and an unchanged image file is left as
# it was. kdive's image is named as deploy/kdive.yaml names it; the others
# as Kubernetes v1.37's e2e tests and kubelet ask for them.
KDIVE_IMAGE   := $(shell sed -n 's/^[[:space:]-]*image:[[:space:]]*//p' deploy/kdive.yaml | head -n1 | tr -d "\"'")
PAUSE_IMAGE   := registry.k8s.io/pause:3.10.2
AGNHOST_IMAGE := registry.k8s.io/e2e-test-images/agnhost:$(AGNHOST_VERSION)
BUSYBOX_IMAGE := registry.k8s.io/e2e-test-images/busybox:1.37.0-2
COREDNS_IMAGE := registry.k8s.io/coredns/coredns:$(COREDNS_VERSION)
GLIBC_DNS_IMAGE := registry.k8s.io/e2e-test-images/glibc-dns-testing:2.1.1
NGINX_IMAGE   := registry.k8s.io/e2e-test-images/nginx:1.27.0-2
REGRESSION_74839_IMAGE := registry.k8s.io/e2e-test-images/regression-issue-74839:1.5
DISTROLESS_IPTABLES_IMAGE := registry.k8s.io/build-image/distroless-iptables:v0.9.9
IMAGES := bin/images/pause.tar bin/images/agnhost.tar bin/images/busybox.tar bin/images/coredns.tar \
          bin/images/glibc-dns-testing.tar bin/images/nginx.tar bin/images/regression-issue-74839.tar \
          bin/images/distroless-iptables.tar
MKIMAGE := bin/mkimage
IMAGE_PATH := /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

bin/mkimage: FORCE
	cd hack/image && go build -o $(CURDIR)/$@ .

bin/pause: FORCE
	cd hack/image && CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o $(CURDIR)/$@ ./pause

# kdive's image: the agent and the CNI plugin, static (make build's are
# linked against libc) and stripped, and the userland they run, from this
# machine with its libraries: iptables under all of Debian's names, the
# plain ones meaning nft as Debian's alternatives do by default.
bin/static/kdive bin/static/kdive-cni &: FORCE
	CGO_ENABLED=0 go build -trimpath -ldflags '-s -w $(LDFLAGS)' -o bin/static/ ./cmd/kdive ./cmd/kdive-cni

KDIVE_IMAGE_HOST := /usr/sbin/nft /usr/sbin/ipset /usr/sbin/ipvsadm /usr/sbin/conntrack /usr/bin/ip \
  $(wildcard /usr/sbin/iptables-nft* /usr/sbin/iptables-legacy* /usr/sbin/ip6tables-nft* /usr/sbin/ip6tables-legacy*) \
  /usr/lib/x86_64-linux-gnu/xtables \
  $(wildcard /usr/sbin/modprobe /etc/protocols /etc/services /etc/ethertypes /etc/iproute2)
XT_PLAIN := iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore

bin/kdive-image.tar: bin/static/kdive bin/static/kdive-cni bin/mkimage FORCE
	$(MKIMAGE) -o $@ -env PATH=$(IMAGE_PATH) -tag $(KDIVE_IMAGE) \
	  -file bin/static/kdive:/usr/local/bin/kdive -file bin/static/kdive-cni:/usr/local/bin/kdive-cni \
	  $(addprefix -host ,$(KDIVE_IMAGE_HOST)) \
	  $(foreach t,$(XT_PLAIN),-symlink $(subst tables,tables-nft,$(t)):/usr/sbin/$(t)) \
	  -file /bin/busybox:/bin/busybox -symlink busybox:/bin/sh \
	  -dir /tmp:1777 -dir /run -symlink ../run:/var/run

bin/images/pause.tar: bin/pause bin/mkimage FORCE
	@mkdir -p $(@D)
	$(MKIMAGE) -o $@ -env PATH=$(IMAGE_PATH) -tag $(PAUSE_IMAGE) -file bin/pause:/pause -entrypoint /pause

# agnhost's upstream image is Alpine (musl's getent) with bind-tools, curl, netcat-openbsd,
# iproute2, bash, socat and iperf (2), which the e2e tests run in it; these are
# Debian's, with their libraries, and busybox for the rest. sh is bash:
# Debian's static busybox shell runs its own applets (nc among them) before
# any program on PATH. wget is GNU's: with glibc's NSS modules in the image,
# static busybox's resolver crashes (SIGSEGV) as it loads them. /coredns is
# CoreDNS, as upstream's image has it (the DNS configMap tests run it).
# Its TLS servers (porter, netexec) read /localhost.crt and /localhost.key.
AGNHOST_DIR = $(shell cd hack/kubernetes && go list -m -f '{{.Dir}}' k8s.io/kubernetes)/test/images/agnhost
AGNHOST_HOST := /usr/bin/dig /usr/bin/getent /usr/bin/wget /usr/bin/curl /usr/bin/nc.openbsd /usr/bin/socat /usr/sbin/ip /usr/bin/bash /usr/bin/iperf
bin/images/agnhost.tar: bin/agnhost bin/coredns bin/mkimage FORCE
	@mkdir -p $(@D)
	$(MKIMAGE) -o $@ -env PATH=$(IMAGE_PATH) -tag $(AGNHOST_IMAGE) -file bin/agnhost:/agnhost -busybox /bin/busybox:/bin -dir /tmp:1777 \
	  $(addprefix -host ,$(AGNHOST_HOST)) -symlink nc.openbsd:/usr/bin/nc -symlink bash:/bin/sh -symlink agnhost:/agnhost-2 -dir /uploads \
	  -file bin/coredns:/coredns -file $(AGNHOST_DIR)/porter/localhost.crt:/localhost.crt -file $(AGNHOST_DIR)/porter/localhost.key:/localhost.key \
	  -file hack/image/etc/agnhost-passwd:/etc/passwd -file hack/image/etc/agnhost-group:/etc/group -file hack/image/etc/nsswitch.conf:/etc/nsswitch.conf \
	  -entrypoint /agnhost -cmd pause

bin/images/busybox.tar: bin/mkimage FORCE
	@mkdir -p $(@D)
	$(MKIMAGE) -o $@ -env PATH=$(IMAGE_PATH) -tag $(BUSYBOX_IMAGE) -busybox /bin/busybox:/bin -dir /tmp:1777 -cmd sh

bin/images/coredns.tar: bin/coredns bin/mkimage FORCE
	@mkdir -p $(@D)
	$(MKIMAGE) -o $@ -env PATH=$(IMAGE_PATH) -tag $(COREDNS_IMAGE) -file bin/coredns:/coredns -entrypoint /coredns

# The e2e tests' DNS probes run dig and getent (glibc's, with its resolver)
# under sh: Debian's, with their libraries, and busybox for the rest.
bin/images/glibc-dns-testing.tar: bin/mkimage FORCE
	@mkdir -p $(@D)
	$(MKIMAGE) -o $@ -env PATH=$(IMAGE_PATH) -tag $(GLIBC_DNS_IMAGE) -host /usr/bin/dig -host /usr/bin/getent \
	  -file hack/image/etc/nsswitch.conf:/etc/nsswitch.conf -busybox /bin/busybox:/bin -dir /tmp:1777 -cmd sh

# nginx from Debian's package, unpacked under bin/deb (not installed: the
# package would start a server on this machine), serving on port 80.
bin/deb/nginx/usr/sbin/nginx:
	@mkdir -p bin/deb && rm -rf bin/deb/nginx
	cd bin/deb && { apt-get download -qq nginx 2>/dev/null || { apt-get update -qq && apt-get download -qq nginx; }; } && \
	  dpkg-deb -x nginx_*.deb nginx && rm -f nginx_*.deb

bin/images/nginx.tar: bin/deb/nginx/usr/sbin/nginx bin/mkimage FORCE
	@mkdir -p $(@D)
	$(MKIMAGE) -o $@ -env PATH=$(IMAGE_PATH) -tag $(NGINX_IMAGE) -file bin/deb/nginx/usr/sbin/nginx:/usr/sbin/nginx \
	  -file hack/image/etc/nginx.conf:/etc/nginx/nginx.conf -file hack/image/etc/passwd:/etc/passwd -file hack/image/etc/group:/etc/group -file hack/image/etc/index.html:/usr/share/nginx/html/index.html \
	  -dir /var/log/nginx -dir /var/lib/nginx -dir /run -dir /tmp:1777 -busybox /bin/busybox:/bin -entrypoint /usr/sbin/nginx

# The Conntrack test's "boom" server (a raw-socket program of the module's
# test/images): the binary alone, as upstream's image on debian-base.
bin/images/regression-issue-74839.tar: bin/regression-issue-74839 bin/mkimage FORCE
	@mkdir -p $(@D)
	$(MKIMAGE) -o $@ -env PATH=$(IMAGE_PATH) -tag $(REGRESSION_74839_IMAGE) -file bin/regression-issue-74839:/regression-issue-74839 \
	  -dir /tmp:1777 -entrypoint /regression-issue-74839

# The KubeProxy CLOSE_WAIT test reads the node's conntrack table in it:
# Debian's conntrack with its libraries, and busybox for the shell.
bin/images/distroless-iptables.tar: bin/mkimage FORCE
	@mkdir -p $(@D)
	$(MKIMAGE) -o $@ -env PATH=$(IMAGE_PATH) -tag $(DISTROLESS_IPTABLES_IMAGE) -host /usr/sbin/conntrack \
	  -busybox /bin/busybox:/bin -dir /tmp:1777 -cmd sh

# Upstream's e2e suite (hack/e2e runs it against a Kubernetes lab).
bin/e2e.test: FORCE
	cd hack/kubernetes && CGO_ENABLED=0 go test -c -ldflags '$(K8S_LDFLAGS)' -o $(CURDIR)/$@ k8s.io/kubernetes/test/e2e

image: build bin/kdive-image.tar
images: $(IMAGES)
kubernetes: deps $(K8S_BINS) bin/containerd bin/crictl bin/coredns $(CNI_PLUGINS) bin/e2e.test image images
FORCE:

demo: deps build
	hack/demo.sh

test: deps build kubernetes vet test-native bench-smoke test-e2e test-vm

vet:
	go vet ./...

# Unit tests, root tests in real network namespaces on this kernel, and the
# VM runner's own tests (boot, exit status, timeout, no qemu left behind).
test-native:
	KDIVE_TEST_BINDIR=$(CURDIR)/bin go test -count=1 -timeout 20m ./...

# The Go benchmarks of the render and diff hot paths, once each, so they
# cannot rot (kdive bench and docs/benchmarks.md report the numbers).
bench-smoke:
	go test -count=1 -run '^$$' -bench 'Render|Plan' -benchtime 1x ./internal/proxy/...

# Feature tests inside the VM with Debian's kernel.
test-vm:
	$(VMTEST) ./internal/kernel/...
	KDIVE_TEST_BINDIR=$(CURDIR)/bin $(VMTEST) -run '$(VM_RUN)' -skip '$(VM_KUBE_RUN)' $(VM_PKGS)

# Upstream's e2e suite on a Kubernetes lab (hack/conformance, hack/e2e):
# make test runs the sig-network Services and Networking conformance tests
# in nftables mode with routed veths; make conformance all 47 sig-network
# conformance tests in every mode this kernel has, each on a fresh lab
# (docs/conformance.md has the tables and the wider runs).
E2E_SMOKE := \[sig-network\] (Services|Networking).*\[Conformance\]
test-e2e:
	hack/conformance -f '$(E2E_SMOKE)' nftables/routed

conformance: build kubernetes
	hack/conformance

# The wider sig-network run (hack/conformance -w) in the same modes: more
# than an hour a mode on two cores.
conformance-wide: build kubernetes
	hack/conformance -w

# Preset A (IPIP, IPVS) as a real Kubernetes cluster in the test VM.
test-kubernetes-vm: build kubernetes
	KDIVE_TEST_BINDIR=$(CURDIR)/bin $(VMKUBETEST) -v -run '$(VM_KUBE_RUN)' ./internal/lab/

# Faults on a real cluster (TestKubernetesFaults, docs/reliability.md): a
# Kubernetes lab under request streams while kdive's pod is deleted and its
# agent killed, containerd and the kubelet restart, the API server is down
# for two minutes, a node is cut off and 1,000 Services churn (10,000 with
# KDIVE_FAULTS_FULL=1). About 9 minutes on 2 cores: make test does
# not run it.
test-faults: build kubernetes
	KDIVE_FAULTS=1 KDIVE_TEST_BINDIR=$(CURDIR)/bin go test -count=1 -timeout 60m -v -run 'TestKubernetesFaults$$' ./internal/lab/

clean:
	rm -rf bin .cache
