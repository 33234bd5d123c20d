package labstore

import (
	"context"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/informers"

	"github.com/kdive/kdive/internal/kernel/ktest"
)

// TestCorruptStoreRefused: a store.json that does not parse is never read
// as an empty store (every agent would delete every object): Read and
// Update refuse it, naming the file, where it broke and the way back
// (store.json.prev, the revision before the last change); Update writes
// nothing; putting the previous revision back lets updates go on.
func TestCorruptStoreRefused(t *testing.T) {
	s := Open(t.TempDir())
	update(t, s, func(sn *Snapshot) { sn.Nodes = []corev1.Node{node("a", "10.0.1.0/24")} })
	update(t, s, func(sn *Snapshot) { sn.Nodes = append(sn.Nodes, node("b", "10.0.2.0/24")) })
	good, err := os.ReadFile(s.Path())
	if err != nil {
		t.Fatal(err)
	}
	corrupt := append(good[:len(good)/2:len(good)/2], "\x00garbage"...)
	if err := os.WriteFile(s.Path(), corrupt, 0o644); err != nil {
		t.Fatal(err)
	}

	_, err = s.Read()
	var ce *CorruptError
	if !errors.As(err, &ce) {
		t.Fatalf("reading a corrupt store: %v, want a *CorruptError", err)
	}
	for _, want := range []string{s.Path() + " is corrupt", "at byte ", "keep serving", s.Path() + ".prev holds revision 1", "copy it over store.json"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	called := false
	err = s.Update(func(*Snapshot) error { called = true; return nil })
	if !errors.As(err, &ce) || called {
		t.Errorf("updating a corrupt store: %v (change applied: %v), want the *CorruptError and no change", err, called)
	}
	if b, _ := os.ReadFile(s.Path()); string(b) != string(corrupt) {
		t.Error("a refused update rewrote the corrupt store")
	}

	// The way back the message gives.
	prev, err := os.ReadFile(s.Path() + ".prev")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.Path(), prev, 0o644); err != nil {
		t.Fatal(err)
	}
	update(t, s, func(sn *Snapshot) { sn.Nodes = append(sn.Nodes, node("c", "10.0.3.0/24")) })
	snap, err := s.Read()
	if err != nil || snap.Revision != 2 || len(snap.Nodes) != 2 {
		t.Errorf("after restoring revision 1 and one update: %+v, %v; want revision 2 with nodes a and c", snap, err)
	}

	// Both damaged: the message says no earlier revision is kept.
	for _, p := range []string{s.Path(), s.Path() + ".prev"} {
		if err := os.WriteFile(p, []byte("{"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Read(); err == nil || !strings.Contains(err.Error(), "no earlier revision is kept") {
		t.Errorf("both files corrupt: %v", err)
	}
}

// TestMirrorKeepsServingCorruptStore: an agent's mirror that finds the
// store corrupt reports it and keeps its objects (it does not delete
// them), and follows the store again once it is repaired.
func TestMirrorKeepsServingCorruptStore(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := Open(t.TempDir())
	update(t, s, func(sn *Snapshot) { sn.Nodes = []corev1.Node{node("a", "10.0.1.0/24")} })
	var mu sync.Mutex
	var reported []error
	m := NewMirror(s)
	if err := m.Start(ctx, func(err error) { mu.Lock(); reported = append(reported, err); mu.Unlock() }); err != nil {
		t.Fatal(err)
	}
	f := informers.NewSharedInformerFactory(m.Client(), 0)
	inf := f.Core().V1().Nodes().Informer()
	f.Start(ctx.Done())
	f.WaitForCacheSync(ctx.Done())
	ktest.Eventually(t, 5*time.Second, "the informer to hold node a", nodesAre(inf, "a=10.0.1.0/24"))

	if err := os.WriteFile(s.Path(), []byte(`{"revision": 7, "nodes": [`), 0o644); err != nil {
		t.Fatal(err)
	}
	ktest.Eventually(t, 10*time.Second, "the mirror to report the corrupt store", func() error {
		mu.Lock()
		defer mu.Unlock()
		for _, err := range reported {
			var ce *CorruptError
			if errors.As(err, &ce) {
				return nil
			}
		}
		return errors.New("not reported")
	})
	if got := nodeNames(inf); got != "a=10.0.1.0/24" {
		t.Errorf("with the store corrupt the informer holds %q, want node a kept", got)
	}

	// Repaired (a writer puts a valid store in place): followed again.
	if err := os.WriteFile(s.Path(), []byte(`{"revision": 9, "nodes": [{"metadata": {"name": "b"}, "spec": {"podCIDR": "10.0.2.0/24"}}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	ktest.Eventually(t, 10*time.Second, "the informer to follow the repaired store", nodesAre(inf, "b=10.0.2.0/24"))
}
