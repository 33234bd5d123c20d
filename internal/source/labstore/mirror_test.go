package labstore

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"

	"github.com/kdive/kdive/internal/kernel/ktest"
)

func node(name, cidr string) corev1.Node {
	return corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.NodeSpec{PodCIDR: cidr}}
}

func TestStoreUpdate(t *testing.T) {
	s := Open(t.TempDir())
	snap, err := s.Read()
	if err != nil || snap.Revision != 0 || len(snap.Nodes) != 0 {
		t.Fatalf("empty store = %+v, %v", snap, err)
	}
	if err := s.Update(func(sn *Snapshot) error { sn.Nodes = append(sn.Nodes, node("a", "10.0.1.0/24")); return nil }); err != nil {
		t.Fatal(err)
	}
	boom := fmt.Errorf("boom")
	if err := s.Update(func(sn *Snapshot) error { sn.Nodes = nil; return boom }); err != boom {
		t.Fatalf("failing update: %v", err)
	}
	if snap, err = s.Read(); err != nil {
		t.Fatal(err)
	}
	if snap.Revision != 1 || len(snap.Nodes) != 1 {
		t.Errorf("after a failed update: %+v", snap)
	}
	// Concurrent writers never lose an update.
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Update(func(sn *Snapshot) error {
				sn.Nodes = append(sn.Nodes, node(fmt.Sprintf("n%d", i), ""))
				return nil
			}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if snap, err = s.Read(); err != nil {
		t.Fatal(err)
	}
	if snap.Revision != 21 || len(snap.Nodes) != 21 {
		t.Errorf("after 20 concurrent updates: revision %d, %d nodes", snap.Revision, len(snap.Nodes))
	}
}

// nodeNames lists what an informer's cache holds, as "name=podCIDR".
func nodeNames(inf cache.SharedIndexInformer) string {
	var out []string
	for _, o := range inf.GetStore().List() {
		n := o.(*corev1.Node)
		out = append(out, n.Name+"="+n.Spec.PodCIDR)
	}
	sort.Strings(out)
	return strings.Join(out, " ")
}

// update changes the store's snapshot, failing the test if it cannot.
func update(t *testing.T, s *Store, change func(*Snapshot)) {
	t.Helper()
	if err := s.Update(func(sn *Snapshot) error { change(sn); return nil }); err != nil {
		t.Fatal(err)
	}
}

// nodesAre is a condition for ktest.Eventually: the informer holds want.
func nodesAre(inf cache.SharedIndexInformer, want string) func() error {
	return func() error {
		if got := nodeNames(inf); got != want {
			return fmt.Errorf("nodes %q, want %q", got, want)
		}
		return nil
	}
}

func TestMirrorFeedsInformers(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := Open(t.TempDir())
	update(t, s, func(sn *Snapshot) { sn.Nodes = []corev1.Node{node("a", "10.0.1.0/24")} })
	m := NewMirror(s)
	if err := m.Start(ctx, func(err error) { t.Error(err) }); err != nil {
		t.Fatal(err)
	}
	f := informers.NewSharedInformerFactory(m.Client(), 0)
	inf := f.Core().V1().Nodes().Informer()
	// Changes while the informer starts (between its list and its watch)
	// must not be lost.
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 30 {
			if err := s.Update(func(sn *Snapshot) error {
				sn.Nodes = []corev1.Node{node("a", fmt.Sprintf("10.0.%d.0/24", i))}
				return nil
			}); err != nil {
				t.Error(err)
			}
			time.Sleep(time.Millisecond) // not a wait: spreads the changes across the informer's start
		}
	}()
	f.Start(ctx.Done())
	f.WaitForCacheSync(ctx.Done())
	<-done
	ktest.Eventually(t, 5*time.Second, "the informer to see the last change", nodesAre(inf, "a=10.0.29.0/24"))

	update(t, s, func(sn *Snapshot) { sn.Nodes = []corev1.Node{node("b", "10.0.2.0/24"), node("c", "10.0.3.0/24")} })
	ktest.Eventually(t, 5*time.Second, "the informer to see a replacement", nodesAre(inf, "b=10.0.2.0/24 c=10.0.3.0/24"))
}

// TestMirrorChangeBetweenListAndWatch is the race informers would lose
// without the mirror's hold-back: changes land after a list and before the
// watch from the list's resource version. The tracker alone would replay the
// addition but never the deletion.
func TestMirrorChangeBetweenListAndWatch(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := Open(t.TempDir())
	update(t, s, func(sn *Snapshot) { sn.Nodes = []corev1.Node{node("a", "10.0.1.0/24")} })
	m := NewMirror(s)
	if err := m.Start(ctx, nil); err != nil {
		t.Fatal(err)
	}
	list, err := m.Client().CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil || len(list.Items) != 1 {
		t.Fatalf("list = %v, %v", list, err)
	}
	update(t, s, func(sn *Snapshot) { sn.Nodes = []corev1.Node{node("b", "10.0.2.0/24")} })
	ktest.Eventually(t, 5*time.Second, "the mirror at revision 2", func() error {
		if r := m.currentRevision(); r != 2 {
			return fmt.Errorf("revision %d", r)
		}
		return nil
	})
	w, err := m.Client().CoreV1().Nodes().Watch(ctx, metav1.ListOptions{ResourceVersion: list.ResourceVersion})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	var got []string
	for len(got) < 2 {
		select {
		case ev := <-w.ResultChan():
			got = append(got, string(ev.Type)+" "+ev.Object.(*corev1.Node).Name)
		case <-time.After(3 * time.Second):
			t.Fatalf("watch delivered only %v; want the deletion of a and the addition of b", got)
		}
	}
	sort.Strings(got)
	if strings.Join(got, ", ") != "ADDED b, DELETED a" {
		t.Errorf("watch events = %v", got)
	}
}
