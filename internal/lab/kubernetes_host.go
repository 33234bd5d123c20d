package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kdive/kdive/internal/fileutil"
	"github.com/kdive/kdive/internal/lab/k8s"
)

// What a Kubernetes lab changes outside its namespaces and /run/kdive, and
// how lab down undoes it:
//
//   - cgroups: each node's cgroupRoot /kdive-LAB/NODE, in every cgroup v1
//     hierarchy (runc adds the same path under the empty cgroup2 at
//     /sys/fs/cgroup/unified) or on cgroup2 alone, with the root's
//     controllers enabled in the root's and the lab's subtree_control;
//     lab down kills what is left in them and removes them; the root's
//     subtree_control is saved before the first Kubernetes lab and
//     restored after the last;
//   - sysctls the kubelet sets at start (vm.overcommit_memory,
//     kernel.panic, ...): saved before the first Kubernetes lab starts,
//     restored when the last one goes;
//   - the production paths each node bind-mounts over (k8s.NodeMounts):
//     the mount points are created when missing and removed, when empty,
//     with the last Kubernetes lab.
//
// Mounts themselves live in the nodes' mount namespaces and vanish with
// their processes.

// hostFile records what Kubernetes labs changed on the host.
var hostFile = filepath.Join(filepath.Dir(RunDir), "kubernetes-host.json")

type hostRecord struct {
	Labs    []string          `json:"labs"`
	Sysctls map[string]string `json:"sysctls"`
	// SubtreeControl is the cgroup2 root's cgroup.subtree_control
	// before the first lab, on a machine with cgroup2 alone.
	SubtreeControl *string  `json:"subtreeControl,omitempty"`
	Mountpoints    []string `json:"mountpoints"`
}

// kubeletSysctls are the ones the kubelet sets at start
// (setupKernelTunables with protectKernelDefaults false).
var kubeletSysctls = []string{
	"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
	"kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes",
}

func readHostRecord() (*hostRecord, error) {
	var r hostRecord
	b, err := os.ReadFile(hostFile)
	if errors.Is(err, os.ErrNotExist) {
		return &r, nil
	}
	if err != nil {
		return nil, err
	}
	return &r, json.Unmarshal(b, &r)
}

func (r *hostRecord) write() error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return fileutil.WriteAtomic(hostFile, b, 0o644)
}

// claimHost records that Kubernetes lab name uses the host, saving the
// kubelet's sysctls first when it is the first.
func claimHost(name string) error {
	return withHostRecord(func() error { return claimHostLocked(name) })
}

// withHostRecord runs fn holding the host record's lock: labs come up and
// go down concurrently, and a lost entry would let one lab's down remove
// mount points another lab's nodes still mount over.
func withHostRecord(fn func() error) error {
	return fileutil.WithLock(filepath.Dir(hostFile), "kubernetes-host.lock", 0o755, fn)
}

func claimHostLocked(name string) error {
	r, err := readHostRecord()
	if err != nil {
		return fmt.Errorf("host record %s: %w", hostFile, err)
	}
	if len(r.Labs) == 0 {
		r.Sysctls = map[string]string{}
		for _, k := range kubeletSysctls {
			if b, err := os.ReadFile("/proc/sys/" + k); err == nil {
				r.Sysctls[k] = strings.TrimSpace(string(b))
			}
		}
		if cgroupUnified() {
			b, err := os.ReadFile(filepath.Join(cgroupFS, "cgroup.subtree_control"))
			if err != nil {
				return err
			}
			sc := strings.TrimSpace(string(b))
			r.SubtreeControl = &sc
		}
	}
	if !slices.Contains(r.Labs, name) {
		r.Labs = append(r.Labs, name)
	}
	return r.write()
}

// ensureMountpoints creates the production paths the nodes bind-mount
// over, recording the ones it created.
func ensureMountpoints() error { return withHostRecord(ensureMountpointsLocked) }

func ensureMountpointsLocked() error {
	r, err := readHostRecord()
	if err != nil {
		return err
	}
	changed := false
	for _, m := range k8s.NodeMounts {
		// Record every missing directory on the way, outermost first.
		var missing []string
		for d := m; d != "/"; d = filepath.Dir(d) {
			if _, err := os.Stat(d); errors.Is(err, os.ErrNotExist) {
				missing = append([]string{d}, missing...)
			}
		}
		if len(missing) == 0 {
			continue
		}
		if err := os.MkdirAll(m, 0o755); err != nil {
			return err
		}
		for _, d := range missing {
			if !slices.Contains(r.Mountpoints, d) {
				r.Mountpoints = append(r.Mountpoints, d)
				changed = true
			}
		}
	}
	if changed {
		return r.write()
	}
	return nil
}

// releaseHost forgets lab name; with the last Kubernetes lab gone it
// restores the sysctls and removes the mount points it created (those
// still empty).
func releaseHost(name string) error {
	return withHostRecord(func() error { return releaseHostLocked(name) })
}

func releaseHostLocked(name string) error {
	r, err := readHostRecord()
	if err != nil || !slices.Contains(r.Labs, name) {
		return err
	}
	r.Labs = slices.DeleteFunc(r.Labs, func(l string) bool { return l == name })
	if len(r.Labs) > 0 {
		return r.write()
	}
	var errs []error
	for k, v := range r.Sysctls {
		if err := os.WriteFile("/proc/sys/"+k, []byte(v), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("restore sysctl %s: %w", k, err))
		}
	}
	if r.SubtreeControl != nil {
		if err := restoreSubtreeControl(*r.SubtreeControl); err != nil {
			errs = append(errs, err)
		}
	}
	// Deepest first.
	sort.Slice(r.Mountpoints, func(i, j int) bool { return len(r.Mountpoints[i]) > len(r.Mountpoints[j]) })
	for _, d := range r.Mountpoints {
		if err := syscall.Rmdir(d); err != nil && !errors.Is(err, syscall.ENOENT) && !errors.Is(err, syscall.ENOTEMPTY) {
			errs = append(errs, fmt.Errorf("remove %s: %w", d, err))
		}
	}
	if err := os.Remove(hostFile); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// cgroupBase is the lab's cgroup, parent of its nodes' cgroupRoots.
func cgroupBase(lab string) string { return "kdive-" + lab }

// cgroupRoot is node's kubelet cgroupRoot.
func (p *Plan) cgroupRoot(node string) string { return "/" + cgroupBase(p.Name) + "/" + node }

const cgroupFS = "/sys/fs/cgroup"

// cgroupUnified reports whether the machine has cgroup2 alone at
// /sys/fs/cgroup (as systemd mounts it by default since 2021) rather than
// the v1 hierarchies beside an empty cgroup2 at unified.
func cgroupUnified() bool {
	_, err := os.Stat(filepath.Join(cgroupFS, "cgroup.controllers"))
	return err == nil
}

// cgroupHierarchies are the mounted cgroup hierarchies: /sys/fs/cgroup on
// cgroup2 alone; else the v1 ones and the (here empty) cgroup2 at unified.
func cgroupHierarchies() ([]string, error) {
	if cgroupUnified() {
		return []string{cgroupFS}, nil
	}
	entries, err := os.ReadDir(cgroupFS)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		path := filepath.Join(cgroupFS, e.Name())
		if fi, err := os.Stat(path); err == nil && fi.IsDir() {
			if _, err := os.Stat(filepath.Join(path, "cgroup.procs")); err == nil {
				out = append(out, path)
			}
		}
	}
	return out, nil
}

// labCgroup is lab's cgroup in the hierarchy that holds every process:
// cgroup2 alone, or v1's pids.
func labCgroup(lab string) string {
	if cgroupUnified() {
		return filepath.Join(cgroupFS, cgroupBase(lab))
	}
	return filepath.Join(cgroupFS, "pids", cgroupBase(lab))
}

// makeCgroups creates node's cgroupRoot. On cgroup v1 it does so in every
// hierarchy, with cpuset's cpus and mems copied from the parent (a new
// cpuset cgroup starts with none and would refuse every task). On cgroup2
// it enables every controller the root has in the root's and the lab's
// subtree_control, so they reach the node's cgroup: the kubelet takes a cgroupRoot without cpu, cpuset, memory,
// hugetlb or pids for missing.
func (p *Plan) makeCgroups(node string) error {
	if cgroupUnified() {
		return p.makeCgroups2(node)
	}
	hs, err := cgroupHierarchies()
	if err != nil {
		return err
	}
	for _, h := range hs {
		if filepath.Base(h) == "unified" {
			continue
		}
		parent := h
		for _, part := range []string{cgroupBase(p.Name), node} {
			dir := filepath.Join(parent, part)
			if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
				return err
			}
			if filepath.Base(h) == "cpuset" {
				for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
					b, err := os.ReadFile(filepath.Join(parent, f))
					if err != nil {
						return err
					}
					if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
						return err
					}
				}
			}
			parent = dir
		}
	}
	return nil
}

func (p *Plan) makeCgroups2(node string) error {
	b, err := os.ReadFile(filepath.Join(cgroupFS, "cgroup.controllers"))
	if err != nil {
		return err
	}
	var enable []string
	for _, c := range strings.Fields(string(b)) {
		enable = append(enable, "+"+c)
	}
	lab := labCgroup(p.Name)
	for _, d := range []string{lab, filepath.Join(lab, node)} {
		if err := os.Mkdir(d, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
	}
	// A controller reaches a cgroup only through its parent's
	// subtree_control. The root is exempt from "no processes in a cgroup
	// that delegates", and the lab's cgroup holds none of its own; the
	// kubelet enables what kubepods needs in the node's.
	for _, d := range []string{cgroupFS, lab} {
		if err := os.WriteFile(filepath.Join(d, "cgroup.subtree_control"), []byte(strings.Join(enable, " ")), 0o644); err != nil {
			return fmt.Errorf("enable %s in %s: %w", strings.Join(enable, " "), d, err)
		}
	}
	return nil
}

// restoreSubtreeControl disables in the cgroup2 root's subtree_control
// the controllers that were not enabled before the first lab. The lab's
// cgroups are gone by then; a controller some other cgroup delegates
// further (EBUSY) cannot be disabled and is reported.
func restoreSubtreeControl(saved string) error {
	path := filepath.Join(cgroupFS, "cgroup.subtree_control")
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	before := strings.Fields(saved)
	var errs []error
	for _, c := range strings.Fields(string(b)) {
		if slices.Contains(before, c) {
			continue
		}
		if err := os.WriteFile(path, []byte("-"+c), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("restore cgroup2 root: disable %s: %w", c, err))
		}
	}
	return errors.Join(errs...)
}

// removeCgroups kills every process left in lab's cgroups (pods'
// containers, which live in network namespaces of their own) and removes
// the cgroups, deepest first, in every hierarchy.
func removeCgroups(lab string) error {
	hs, err := cgroupHierarchies()
	if err != nil {
		return err
	}
	var dirs []string
	for _, h := range hs {
		base := filepath.Join(h, cgroupBase(lab))
		_ = filepath.WalkDir(base, func(path string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
	}
	if len(dirs) == 0 {
		return nil
	}
	pids := func() []int {
		var out []int
		for _, d := range dirs {
			b, _ := os.ReadFile(filepath.Join(d, "cgroup.procs"))
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil && !slices.Contains(out, pid) {
					out = append(out, pid)
				}
			}
		}
		return out
	}
	for attempt := 0; attempt < 100; attempt++ {
		left := pids()
		if len(left) == 0 {
			break
		}
		for _, pid := range left {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(50 * time.Millisecond)
	}
	sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
	var errs []error
	for _, d := range dirs {
		var err error
		for range 50 { // a killed task leaves its cgroup a moment later
			if err = syscall.Rmdir(d); err == nil || errors.Is(err, syscall.ENOENT) {
				err = nil
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("remove cgroup %s: %w", d, err))
		}
	}
	return errors.Join(errs...)
}
