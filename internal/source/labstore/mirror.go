package labstore

import (
	"context"
	"fmt"
	"os"
	"reflect"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// Mirror serves a store as a kubernetes.Interface: an in-process object
// tracker kept equal to the store file, so client-go informers list and
// watch the lab's objects exactly as they would a real API server's.
//
// One subtlety: the tracker cannot replay history, so a change made between
// an informer's list and its watch would be lost. The mirror therefore holds
// back changes to a resource from the moment it is listed until its watch
// is registered, then applies the difference.
type Mirror struct {
	store  *Store
	client *fake.Clientset

	mu       sync.Mutex
	kinds    map[schema.GroupVersionResource]*kindState
	revision int64
	latest   *Snapshot
}

type kindState struct {
	pending bool                      // listed, watch not yet registered
	applied map[string]runtime.Object // ns/name -> object in the tracker
}

var (
	gvrNodes          = corev1.SchemeGroupVersion.WithResource("nodes")
	gvrPods           = corev1.SchemeGroupVersion.WithResource("pods")
	gvrServices       = corev1.SchemeGroupVersion.WithResource("services")
	gvrEndpointSlices = discoveryv1.SchemeGroupVersion.WithResource("endpointslices")
)

// NewMirror returns a mirror of store. It does no work until Start.
func NewMirror(store *Store) *Mirror {
	return &Mirror{store: store, kinds: map[schema.GroupVersionResource]*kindState{}}
}

// Client is the kubernetes.Interface the agent builds its informers on.
// Valid after Start.
func (m *Mirror) Client() kubernetes.Interface { return m.client }

// Start loads the store into the mirror and keeps following it until ctx
// ends. Errors reading the store later are reported to onError (which may
// be nil) and retried; the mirror keeps serving the last good snapshot.
func (m *Mirror) Start(ctx context.Context, onError func(error)) error {
	m.client = fake.NewSimpleClientset()
	tracker := m.client.Tracker()
	m.client.PrependReactor("list", "*", func(a k8stesting.Action) (bool, runtime.Object, error) {
		m.mu.Lock()
		m.kind(a.GetResource()).pending = true
		m.mu.Unlock()
		return false, nil, nil // the tracker answers the list
	})
	m.client.PrependWatchReactor("*", func(a k8stesting.Action) (bool, watch.Interface, error) {
		m.mu.Lock()
		defer m.mu.Unlock()
		var opts []metav1ListOptions
		if wa, ok := a.(k8stesting.WatchActionImpl); ok {
			opts = append(opts, wa.ListOptions)
		}
		w, err := tracker.Watch(a.GetResource(), a.GetNamespace(), opts...)
		if err != nil {
			return true, nil, err
		}
		k := m.kind(a.GetResource())
		k.pending = false
		if m.latest != nil {
			if err := m.applyKind(a.GetResource(), k, m.latest); err != nil {
				w.Stop()
				return true, nil, err
			}
		}
		return true, w, nil
	})
	// Watch the directory before the first read, so no change between the
	// two goes unnoticed.
	if err := os.MkdirAll(m.store.Dir(), 0o755); err != nil {
		return fmt.Errorf("lab store: %w", err)
	}
	notify, err := watchDir(m.store.Dir())
	if err != nil && onError != nil {
		onError(fmt.Errorf("watch lab store (falling back to polling): %w", err))
	}
	snap, err := m.store.Read()
	if err == nil {
		err = m.apply(snap)
	}
	if err != nil {
		if notify != nil {
			notify.Close()
		}
		return err
	}
	go m.follow(ctx, notify, onError)
	return nil
}

func (m *Mirror) kind(gvr schema.GroupVersionResource) *kindState {
	k, ok := m.kinds[gvr]
	if !ok {
		k = &kindState{applied: map[string]runtime.Object{}}
		m.kinds[gvr] = k
	}
	return k
}

// apply brings the tracker to snap, except for resources whose watch is
// pending.
func (m *Mirror) apply(snap *Snapshot) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.latest, m.revision = snap, snap.Revision
	for _, gvr := range []schema.GroupVersionResource{gvrNodes, gvrPods, gvrServices, gvrEndpointSlices} {
		k := m.kind(gvr)
		if k.pending {
			continue
		}
		if err := m.applyKind(gvr, k, snap); err != nil {
			return err
		}
	}
	return nil
}

func (m *Mirror) applyKind(gvr schema.GroupVersionResource, k *kindState, snap *Snapshot) error {
	want := objectsOf(gvr, snap)
	tracker := m.client.Tracker()
	for key, obj := range want {
		old, ok := k.applied[key]
		switch {
		case !ok:
			if err := tracker.Create(gvr, obj, namespaceOf(obj)); err != nil {
				return fmt.Errorf("mirror %s %s: %w", gvr.Resource, key, err)
			}
		case !reflect.DeepEqual(old, obj):
			if err := tracker.Update(gvr, obj, namespaceOf(obj)); err != nil {
				return fmt.Errorf("mirror %s %s: %w", gvr.Resource, key, err)
			}
		default:
			continue
		}
		k.applied[key] = obj
	}
	for key, obj := range k.applied {
		if _, ok := want[key]; ok {
			continue
		}
		if err := tracker.Delete(gvr, namespaceOf(obj), nameOf(obj)); err != nil {
			return fmt.Errorf("mirror delete %s %s: %w", gvr.Resource, key, err)
		}
		delete(k.applied, key)
	}
	return nil
}

func objectsOf(gvr schema.GroupVersionResource, s *Snapshot) map[string]runtime.Object {
	out := map[string]runtime.Object{}
	add := func(o runtime.Object) { out[namespaceOf(o)+"/"+nameOf(o)] = o }
	switch gvr {
	case gvrNodes:
		for i := range s.Nodes {
			add(s.Nodes[i].DeepCopy())
		}
	case gvrPods:
		for i := range s.Pods {
			add(s.Pods[i].DeepCopy())
		}
	case gvrServices:
		for i := range s.Services {
			add(s.Services[i].DeepCopy())
		}
	case gvrEndpointSlices:
		for i := range s.EndpointSlices {
			add(s.EndpointSlices[i].DeepCopy())
		}
	}
	return out
}

// follow re-reads the store whenever its file is replaced (inotify), and
// every few seconds regardless, so a missed event costs little.
func (m *Mirror) follow(ctx context.Context, notify *os.File, onError func(error)) {
	changed := make(chan struct{}, 1)
	if notify != nil {
		defer notify.Close()
		go func() {
			buf := make([]byte, 4096)
			for {
				if _, err := notify.Read(buf); err != nil {
					return
				}
				select {
				case changed <- struct{}{}:
				default:
				}
			}
		}()
	}
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-tick.C:
		}
		snap, err := m.store.Read()
		if err == nil && snap.Revision == m.currentRevision() {
			continue
		}
		if err == nil {
			err = m.apply(snap)
		}
		if err != nil && onError != nil {
			onError(err)
		}
	}
}

func (m *Mirror) currentRevision() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.revision
}

// watchDir returns an inotify file that becomes readable when a file is
// renamed into or written in dir. Its reads go through Go's poller, so
// closing it ends a blocked read.
func watchDir(dir string) (*os.File, error) {
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return nil, err
	}
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_MOVED_TO|unix.IN_CLOSE_WRITE); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), "inotify:"+dir), nil
}
