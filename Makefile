# kdive — run as root on Debian. The two commands a newcomer needs:
#   make demo   installs what it needs, builds, and shows the default lab
#   make test   installs what it needs and runs every test (native and VM)

SHELL := /bin/bash
export PATH := /usr/local/go/bin:$(PATH)

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo v0.0.0-dev)
COMMIT  ?= $(shell git rev-parse HEAD 2>/dev/null)
LDFLAGS := -X github.com/kdive/kdive/internal/version.Version=$(VERSION) \
           -X github.com/kdive/kdive/internal/version.Commit=$(COMMIT)

# Packages whose tests need kernel features the development kernel lacks
# (ipip, ip_vs, dummy); `make test-vm` runs them inside the test VM, where a
# missing feature fails instead of skipping.
VM_PKGS := ./internal/kernel/...

.PHONY: all deps build demo test test-native test-vm test-vm-harness vet clean

all: build

deps:
	@hack/deps.sh

build:
	go build -trimpath -ldflags '$(LDFLAGS)' -o bin/kdive ./cmd/kdive
	go build -trimpath -ldflags '$(LDFLAGS)' -o bin/kdive-cni ./cmd/kdive-cni
	go build -o bin/kdive-vm ./hack/vm

demo: deps build
	hack/demo.sh

test: deps build vet test-native test-vm-harness test-vm

vet:
	go vet ./...

# Unit tests and root tests in real network namespaces, on this kernel.
test-native:
	go test -count=1 -timeout 15m ./...

# The VM runner's own tests (boot, exit status, timeout, no qemu left).
test-vm-harness:
	KDIVE_VM_TESTS=1 go test -count=1 -timeout 10m ./hack/vm/

# Feature tests inside the VM with Debian's kernel.
test-vm:
	GOTMPDIR=$(CURDIR)/.cache/gotmp; mkdir -p $$GOTMPDIR; \
	GOTMPDIR=$$GOTMPDIR go test -count=1 -timeout 20m -exec $(CURDIR)/hack/vmexec $(VM_PKGS)

clean:
	rm -rf bin .cache
