package ipam_test

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/kdive/kdive/internal/cni/ipam"
	"github.com/kdive/kdive/internal/fileutil/durabletest"
)

// Address plan: 10.0.1.0/24 (a node's pod block as the lab assigns them) and
// small blocks to reach the edges quickly.

func newStore(t *testing.T, block string) *ipam.Store {
	t.Helper()
	s, err := ipam.New(t.TempDir(), netip.MustParsePrefix(block))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func att(i int) ipam.Attachment {
	return ipam.Attachment{ContainerID: fmt.Sprintf("c%d", i), IfName: "eth0"}
}

func mustAlloc(t *testing.T, s *ipam.Store, a ipam.Attachment) netip.Addr {
	t.Helper()
	ip, err := s.Allocate(a)
	if err != nil {
		t.Fatal(err)
	}
	return ip
}

func TestCheckBlock(t *testing.T) {
	for _, tc := range []struct {
		block, err string
	}{
		{"10.0.1.0/24", ""},
		{"10.0.0.0/16", ""},
		{"10.0.1.4/30", ""},
		{"10.0.1.5/24", "did you mean 10.0.1.0/24"},
		{"10.0.1.0/31", "smallest is a /30"},
		{"10.0.0.0/8", "largest is a /16"},
		{"fd00::/64", "only IPv4"},
	} {
		err := ipam.CheckBlock(netip.MustParsePrefix(tc.block))
		if (err == nil) != (tc.err == "") || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("CheckBlock(%s) = %v, want error containing %q", tc.block, err, tc.err)
		}
	}
	if _, err := ipam.New("relative/dir", netip.MustParsePrefix("10.0.1.0/24")); err == nil {
		t.Error("New accepted a relative data directory")
	}
}

func TestReservedAndFull(t *testing.T) {
	s := newStore(t, "10.0.1.0/29") // .0 network, .1 gateway, .7 broadcast
	var got []string
	for i := range 5 {
		got = append(got, mustAlloc(t, s, att(i)).String())
	}
	if want := "10.0.1.2 10.0.1.3 10.0.1.4 10.0.1.5 10.0.1.6"; strings.Join(got, " ") != want {
		t.Errorf("allocated %v, want %s", got, want)
	}
	_, err := s.Allocate(att(99))
	if !errors.Is(err, ipam.ErrFull) || !strings.Contains(err.Error(), "pod block 10.0.1.0/29 is full (5 addresses in use)") {
		t.Errorf("allocate on a full block: %v", err)
	}
	if ipam.Capacity(netip.MustParsePrefix("10.0.1.0/24")) != 253 {
		t.Errorf("a /24 holds %d pods, want 253", ipam.Capacity(netip.MustParsePrefix("10.0.1.0/24")))
	}
}

func TestFullSlash24Message(t *testing.T) {
	s := newStore(t, "10.0.1.0/24")
	seen := map[netip.Addr]bool{}
	for i := range 253 {
		ip := mustAlloc(t, s, att(i))
		if seen[ip] || ip == netip.MustParseAddr("10.0.1.1") || ip == netip.MustParseAddr("10.0.1.255") {
			t.Fatalf("handed out %s (seen before: %t)", ip, seen[ip])
		}
		seen[ip] = true
	}
	_, err := s.Allocate(att(253))
	if err == nil || !strings.Contains(err.Error(), "pod block 10.0.1.0/24 is full (253 addresses in use)") {
		t.Errorf("allocate on a full /24: %v", err)
	}
}

func TestIdempotentAndRoundRobin(t *testing.T) {
	s := newStore(t, "10.0.1.0/24")
	a := mustAlloc(t, s, att(1))
	if again := mustAlloc(t, s, att(1)); again != a {
		t.Errorf("second Allocate for the same attachment gave %s, want %s", again, a)
	}
	other := ipam.Attachment{ContainerID: "c1", IfName: "net1"}
	if b := mustAlloc(t, s, other); b == a {
		t.Errorf("another interface of the same container got the same address %s", b)
	}
	freed, err := s.Release(att(1))
	if err != nil || len(freed) != 1 || freed[0] != a {
		t.Fatalf("Release = %v, %v; want [%s]", freed, err, a)
	}
	if freed, err := s.Release(att(1)); err != nil || len(freed) != 0 {
		t.Errorf("second Release = %v, %v; want nothing, no error", freed, err)
	}
	if c := mustAlloc(t, s, att(2)); c == a {
		t.Errorf("freed address %s handed out again at once", a)
	}
	// A new store on the same directory (a restarted plugin) continues
	// where the last left off and knows every allocation.
	s2, err := ipam.New(s.Dir(), s.Block())
	if err != nil {
		t.Fatal(err)
	}
	if ip, ok, err := s2.Lookup(other); err != nil || !ok || ip.String() != "10.0.1.3" {
		t.Errorf("Lookup after restart = %s, %t, %v; want 10.0.1.3", ip, ok, err)
	}
	if d := mustAlloc(t, s2, att(3)); d.String() != "10.0.1.5" {
		t.Errorf("after restart allocated %s, want 10.0.1.5 (round-robin)", d)
	}
	if n, err := s2.InUse(); err != nil || n != 3 {
		t.Errorf("InUse = %d, %v; want 3", n, err)
	}
}

func TestGC(t *testing.T) {
	s := newStore(t, "10.0.1.0/24")
	for i := range 4 {
		mustAlloc(t, s, att(i))
	}
	// An unreadable entry (a crash of some other writer) is freed too.
	if err := os.WriteFile(filepath.Join(s.Dir(), "10.0.1.200"), []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	freed, err := s.GC([]ipam.Attachment{att(0), att(2)})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, f := range freed {
		got = append(got, f.Addr.String()+"="+f.Attachment.ContainerID)
	}
	if want := "10.0.1.3=c1 10.0.1.5=c3 10.0.1.200="; strings.Join(got, " ") != want {
		t.Errorf("GC freed %v, want %s", got, want)
	}
	list, err := s.List()
	if err != nil || len(list) != 2 || list[0].Attachment != att(0) || list[1].Attachment != att(2) {
		t.Errorf("after GC List = %v, %v", list, err)
	}
}

func TestBadAttachment(t *testing.T) {
	s := newStore(t, "10.0.1.0/24")
	for _, a := range []ipam.Attachment{{}, {ContainerID: "c"}, {ContainerID: "c\nx", IfName: "eth0"}} {
		if _, err := s.Allocate(a); err == nil {
			t.Errorf("Allocate(%q) succeeded", a)
		}
	}
}

func TestConcurrentGoroutines(t *testing.T) {
	s := newStore(t, "10.0.1.0/24")
	const n = 100
	ips := make([]netip.Addr, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			st, _ := ipam.New(s.Dir(), s.Block())
			ip, err := st.Allocate(att(i))
			if err != nil {
				t.Error(err)
			}
			ips[i] = ip
		})
	}
	wg.Wait()
	seen := map[netip.Addr]int{}
	for i, ip := range ips {
		if j, dup := seen[ip]; dup {
			t.Errorf("%s handed to c%d and c%d", ip, j, i)
		}
		seen[ip] = i
	}
	if n2, _ := s.InUse(); n2 != n {
		t.Errorf("InUse = %d, want %d", n2, n)
	}
}

// TestConcurrentProcesses runs allocations in several processes at once (this
// test binary re-executed), as concurrent CNI invocations do.
func TestConcurrentProcesses(t *testing.T) {
	s := newStore(t, "10.0.1.0/24")
	const procs, each = 8, 10
	var wg sync.WaitGroup
	for p := range procs {
		wg.Go(func() {
			cmd := exec.Command(os.Args[0], "-test.run=^TestIPAMChild$", "-test.count=1")
			cmd.Env = append(os.Environ(), "KDIVE_IPAM_CHILD_DIR="+s.Dir(),
				"KDIVE_IPAM_CHILD_FROM="+strconv.Itoa(p*each), "KDIVE_IPAM_CHILD_N="+strconv.Itoa(each))
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Errorf("child %d: %v\n%s", p, err, out)
			}
		})
	}
	wg.Wait()
	list, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != procs*each {
		t.Fatalf("%d allocations, want %d", len(list), procs*each)
	}
	owners := map[ipam.Attachment]bool{}
	for _, al := range list {
		owners[al.Attachment] = true
	}
	if len(owners) != procs*each {
		t.Errorf("%d distinct owners for %d addresses", len(owners), len(list))
	}
}

// TestIPAMChild is the body of TestConcurrentProcesses' children.
func TestIPAMChild(t *testing.T) {
	dir := os.Getenv("KDIVE_IPAM_CHILD_DIR")
	if dir == "" {
		t.Skip("only runs as a child of TestConcurrentProcesses")
	}
	from, _ := strconv.Atoi(os.Getenv("KDIVE_IPAM_CHILD_FROM"))
	n, _ := strconv.Atoi(os.Getenv("KDIVE_IPAM_CHILD_N"))
	s, err := ipam.New(dir, netip.MustParsePrefix("10.0.1.0/24"))
	if err != nil {
		t.Fatal(err)
	}
	for i := from; i < from+n; i++ {
		if _, err := s.Allocate(att(i)); err != nil {
			t.Fatal(err)
		}
	}
}

// TestDurableAllocateRelease: after a power cut an allocation must not
// vanish (a second pod would get the address) nor a freed one come back
// (the address would leak until GC). Of the calls the kernel sees,
// Allocate's rename of the allocation file and Release's unlink of it
// must each be followed by a sync of the store's directory before the
// call returns.
func TestDurableAllocateRelease(t *testing.T) {
	s := newStore(t, "10.0.1.0/24")
	if err := s.CheckWritable(); err != nil {
		t.Fatal(err)
	}
	dir := s.Dir()
	calls := durabletest.Trace(t, "TestDurableChild", "KDIVE_IPAM_DURABLE_DIR="+dir)
	file := `"` + dir + `/10.0.1.2"`
	syncDir := "<" + dir + ">"
	rename := calls.Index(0, "rename", file)
	released := calls.Index(0, "unlink", file)
	if rename < 0 || released < 0 {
		t.Fatalf("want the allocation of 10.0.1.2 renamed into place and then unlinked; got:\n%s", calls)
	}
	if i := calls.Index(rename+1, "fsync", syncDir); i < 0 || i > released {
		t.Errorf("Allocate did not sync %s after renaming the allocation into place:\n%s", dir, calls)
	}
	if calls.Index(released+1, "fsync", syncDir) < 0 {
		t.Errorf("Release did not sync %s after removing the allocation:\n%s", dir, calls)
	}
}

// TestDurableChild is TestDurableAllocateRelease's traced child.
func TestDurableChild(t *testing.T) {
	dir := os.Getenv("KDIVE_IPAM_DURABLE_DIR")
	if dir == "" {
		t.Skip("only runs as a child of TestDurableAllocateRelease")
	}
	s, err := ipam.New(dir, netip.MustParsePrefix("10.0.1.0/24"))
	if err != nil {
		t.Fatal(err)
	}
	if ip := mustAlloc(t, s, att(1)); ip != netip.MustParseAddr("10.0.1.2") {
		t.Fatalf("allocated %s, want 10.0.1.2 in a fresh store", ip)
	}
	if freed, err := s.Release(att(1)); err != nil || len(freed) != 1 {
		t.Fatalf("release: %v %v", freed, err)
	}
}
