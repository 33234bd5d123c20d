package lab

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/kdive/kdive/internal/kernel/ktest"
)

// TestKubernetesHostCgroup2 checks a Kubernetes lab's cgroups on a machine
// with cgroup2 alone (the test VM; make test runs it there): a node's
// cgroupRoot offers the controllers the kubelet requires, and lab down
// kills what runs in it, removes the cgroups and restores the root's
// subtree_control.
func TestKubernetesHostCgroup2(t *testing.T) {
	ktest.RequireRoot(t)
	if !cgroupUnified() {
		if ktest.InVM() {
			t.Fatal("the test VM has no cgroup2 at /sys/fs/cgroup")
		}
		t.Skip("this machine has the cgroup v1 hierarchies (TestKubernetesLab covers them); make test runs this in the test VM, which has cgroup2 alone")
	}
	const name = "kdt-cg2"
	p := &Plan{Name: name}
	before := cgroupSubtreeControl(t)
	if err := claimHost(name); err != nil {
		t.Fatal(err)
	}
	released := false
	t.Cleanup(func() {
		if !released { // the test failed before it released them: best effort
			_ = removeCgroups(name)
			_ = releaseHost(name)
		}
	})
	if err := p.makeCgroups("node-1"); err != nil {
		t.Fatal(err)
	}
	node := filepath.Join(cgroupFS, p.cgroupRoot("node-1"))
	b, err := os.ReadFile(filepath.Join(node, "cgroup.controllers"))
	if err != nil {
		t.Fatal(err)
	}
	// The kubelet's cgroup v2 manager takes a cgroupRoot without these
	// for missing (hugetlb too when the kernel has it).
	for _, c := range []string{"cpu", "cpuset", "memory", "pids"} {
		if !slices.Contains(strings.Fields(string(b)), c) {
			t.Errorf("node cgroup %s offers %q, lacking %s", node, strings.TrimSpace(string(b)), c)
		}
	}
	// A process in a pod's cgroup under the node's, where the kubelet
	// puts it (kubepods/pod<UID>).
	pod := filepath.Join(node, "kubepods", "podtest-uid")
	if err := os.MkdirAll(pod, 0o755); err != nil {
		t.Fatal(err)
	}
	sleep := exec.Command("sleep", "300")
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- sleep.Wait() }()
	if err := os.WriteFile(filepath.Join(pod, "cgroup.procs"), []byte(strconv.Itoa(sleep.Process.Pid)), 0o644); err != nil {
		_ = sleep.Process.Kill()
		t.Fatal(err)
	}
	if pid, err := podProcess(name, "test-uid"); err != nil || pid != sleep.Process.Pid {
		t.Errorf("the lab's cgroups hold pid %d (%v), want %d", pid, err, sleep.Process.Pid)
	}

	if err := removeCgroups(name); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err == nil {
		t.Error("the process in the pod's cgroup was not killed")
	}
	if err := releaseHost(name); err != nil {
		t.Fatal(err)
	}
	released = true
	if _, err := os.Stat(filepath.Join(cgroupFS, cgroupBase(name))); !os.IsNotExist(err) {
		t.Errorf("cgroup %s left (%v)", cgroupBase(name), err)
	}
	if got := cgroupSubtreeControl(t); got != before {
		t.Errorf("the cgroup2 root's subtree_control is %q after the lab, %q before", got, before)
	}
}
