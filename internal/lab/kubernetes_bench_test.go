package lab

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
)

// BenchmarkKubernetesLab measures a Kubernetes lab of preset D: the time
// lab up takes, pod create-to-Ready latency over 50 pods (one Deployment
// scaled from 0 to 50; each pod's time from its creation to the watch
// seeing it Ready, at the client), and the memory of every process of the
// lab afterwards (RSS of the lab's processes and of its pods' cgroups).
//
//	KDIVE_TEST_BINDIR=$PWD/bin go test -run '^$' -bench KubernetesLab -benchtime 1x ./internal/lab/
func BenchmarkKubernetesLab(b *testing.B) {
	if os.Getenv("KDIVE_TEST_BINDIR") == "" {
		b.Skip("needs make kubernetes's binaries in KDIVE_TEST_BINDIR")
	}
	if err := CheckKubernetesBinaries(testBins(b)); err != nil {
		b.Skip(err)
	}
	const name = "kdb-kube"
	for range b.N {
		s, up, _ := upKubeLab(b, name, "D")
		base := labMemory(name)
		one, err := podReadyLatencies(b, s, "one", 1)
		var lat []time.Duration
		if err == nil {
			lat, err = podReadyLatencies(b, s, "fifty", 50)
		}
		mem := labMemory(name)
		if derr := Down(name); derr != nil {
			b.Errorf("down %s: %v", name, derr)
		}
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(up.Seconds(), "up-s")
		b.ReportMetric(float64(one[0].Milliseconds()), "one-pod-ready-ms")
		b.ReportMetric(float64(percentile(lat, 50).Milliseconds()), "pod-ready-p50-ms")
		b.ReportMetric(float64(percentile(lat, 99).Milliseconds()), "pod-ready-p99-ms")
		b.ReportMetric(float64(base)/(1<<20), "lab-MiB")
		b.ReportMetric(float64(mem)/(1<<20), "lab+51pods-MiB")
	}
}

// podReadyLatencies creates Deployment name of kdive-echo pods, scales it
// from 0 to n and returns each pod's create-to-Ready time as the client
// saw it.
func podReadyLatencies(tb testing.TB, s *State, name string, n int32) ([]time.Duration, error) {
	cs, done, err := KubeClient(s)
	if err != nil {
		return nil, err
	}
	defer done()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	labels := map[string]string{"app": name}
	zero := int32(0)
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: appsv1.DeploymentSpec{
			Replicas: &zero, Selector: &metav1.LabelSelector{MatchLabels: labels}, Template: echoTemplate(tb, labels),
		},
	}
	if _, err := cs.AppsV1().Deployments("default").Create(ctx, d, metav1.CreateOptions{}); err != nil {
		return nil, err
	}
	w, err := cs.CoreV1().Pods("default").Watch(ctx, metav1.ListOptions{LabelSelector: "app=" + name})
	if err != nil {
		return nil, err
	}
	defer w.Stop()
	created := map[string]time.Time{}
	var lat []time.Duration
	scale, err := cs.AppsV1().Deployments("default").GetScale(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	scale.Spec.Replicas = n
	if _, err := cs.AppsV1().Deployments("default").UpdateScale(ctx, name, scale, metav1.UpdateOptions{}); err != nil {
		return nil, err
	}
	for int32(len(lat)) < n {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%d of %d pods Ready: %w", len(lat), n, ctx.Err())
		case ev, ok := <-w.ResultChan():
			if !ok {
				return nil, fmt.Errorf("watch ended with %d of %d pods Ready", len(lat), n)
			}
			pod, isPod := ev.Object.(*corev1.Pod)
			if !isPod || ev.Type == watch.Deleted {
				continue
			}
			if _, seen := created[pod.Name]; !seen {
				created[pod.Name] = time.Now()
			}
			if podIsReady(pod) && !created[pod.Name].IsZero() {
				lat = append(lat, time.Since(created[pod.Name]))
				created[pod.Name] = time.Time{}
			}
		}
	}
	return lat, nil
}

func podIsReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func percentile(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return s[max(0, min(i, len(s))-1)]
}

// labMemory is the proportional set size (shared pages divided among
// their users, so the sum is what the lab costs the machine) of the lab's
// processes (those carrying KDIVE_LAB=name, down to containerd's shims)
// and of its pods (its cgroups), each process counted once.
func labMemory(name string) uint64 {
	pids := map[int]bool{}
	envs, _ := filepath.Glob("/proc/[0-9]*/environ")
	for _, f := range envs {
		if b, err := os.ReadFile(f); err == nil && bytes.Contains(b, []byte("KDIVE_LAB="+name+"\x00")) {
			if pid, err := strconv.Atoi(filepath.Base(filepath.Dir(f))); err == nil {
				pids[pid] = true
			}
		}
	}
	// A lab without the cgroup (not a Kubernetes lab) has no pids in it.
	_ = filepath.WalkDir(filepath.Join(cgroupFS, "pids", cgroupBase(name)), func(path string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			b, _ := os.ReadFile(filepath.Join(path, "cgroup.procs"))
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil {
					pids[pid] = true
				}
			}
		}
		return nil
	})
	var total uint64
	for pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) >= 2 && f[0] == "Pss:" {
				kb, _ := strconv.ParseUint(f[1], 10, 64)
				total += kb << 10
			}
		}
	}
	return total
}
