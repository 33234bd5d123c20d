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
# whose names say IPIP or IPVS. VM tests use the binaries of `make build`.
VM_RUN := IPIP|IPVS
VM_PKGS := ./internal/agent/ ./internal/podnet/ ./internal/proxy/ipvs/ ./internal/lab/ ./internal/diag/ ./internal/verify/ ./internal/bench/
VMTEST := go test -count=1 -p 1 -timeout 20m -exec $(CURDIR)/hack/vmexec

.PHONY: all deps build apiserver demo test test-native bench-smoke test-vm vet clean

all: build

deps:
	@hack/deps.sh

build:
	go build -trimpath -ldflags '$(LDFLAGS)' -o bin/kdive ./cmd/kdive
	go build -trimpath -ldflags '$(LDFLAGS)' -o bin/kdive-cni ./cmd/kdive-cni
	go build -o bin/kdive-vm ./hack/vm

# A real kube-apiserver and etcd at released versions, for the agent's
# integration tests (internal/source/kubetest). hack/apiserver is a module
# of its own, so the product never depends on k8s.io/kubernetes. Cold, this
# takes about 5 minutes and 3 GB of memory; Go's build cache makes repeated
# builds take seconds.
K8S_VERSION := v1.37.2
APISERVER_LDFLAGS := -X k8s.io/component-base/version.gitVersion=$(K8S_VERSION) \
                     -X k8s.io/component-base/version.gitMajor=1 \
                     -X k8s.io/component-base/version.gitMinor=37
apiserver:
	cd hack/apiserver && go build -o $(CURDIR)/bin/etcd ./etcd
	cd hack/apiserver && go build -ldflags '$(APISERVER_LDFLAGS)' -o $(CURDIR)/bin/kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver

demo: deps build
	hack/demo.sh

test: deps build apiserver vet test-native bench-smoke test-vm

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
	KDIVE_TEST_BINDIR=$(CURDIR)/bin $(VMTEST) -run '$(VM_RUN)' $(VM_PKGS)

clean:
	rm -rf bin .cache
