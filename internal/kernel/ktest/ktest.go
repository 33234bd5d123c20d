// Package ktest holds test helpers for code that needs real network
// namespaces: throwaway namespaces that clean up after themselves, the
// checks that skip a test (natively) or fail it (in the test VM) when root
// or a kernel feature is missing, Monitor, which records a namespace's
// change feed (`nft monitor`, `ip monitor`) from the moment it returns, and
// Eventually, the one way tests wait for something.
package ktest

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"testing"

	"github.com/kdive/kdive/internal/kernel"
)

// InVM reports whether the test runs inside kdive's test VM (hack/vmexec),
// where every feature the VM kernel has is required, never skipped.
func InVM() bool { return os.Getenv("KDIVE_TEST_VM") == "1" }

// RequireRoot skips the test when not running as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		if InVM() {
			t.Fatal("test VM runs tests as root, but euid is not 0")
		}
		t.Skip("needs root for network namespaces (run `make test` as root)")
	}
}

// RequireFeature skips the test when the kernel lacks f, saying so, unless
// it runs in the test VM, where a missing feature fails the test: the VM
// exists to run these tests, so a skip there would hide them.
func RequireFeature(t testing.TB, f kernel.Feature) {
	t.Helper()
	RequireRoot(t)
	if err := kernel.Probe(f); err != nil {
		if InVM() {
			t.Fatalf("test VM kernel lacks %s: %v", f, err)
		}
		t.Skipf("kernel lacks %s (%v); `make test` runs this test in the test VM", f, err)
	}
}

// NewNetNS creates a fresh named network namespace (loopback up) that is
// closed and deleted when the test ends.
func NewNetNS(t testing.TB) *kernel.NetNS {
	t.Helper()
	RequireRoot(t)
	var b [4]byte
	_, _ = rand.Read(b[:])
	name := "kdive-test-" + hex.EncodeToString(b[:])
	n, err := kernel.CreateNetNS(name)
	if err != nil {
		t.Fatalf("create test netns: %v", err)
	}
	t.Cleanup(func() {
		n.Close()
		if err := kernel.DeleteNetNS(name); err != nil {
			t.Errorf("delete test netns %s: %v", name, err)
		}
	})
	return n
}
