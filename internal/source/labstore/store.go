// Package labstore is a lab's object store: the Kubernetes objects of one
// lab (Nodes, Pods, Services, EndpointSlices) in a single JSON file under
// the lab's run directory, written by the lab's control-plane commands
// (lab up, apply, delete) and read by every node agent of the lab.
//
// Writers take an exclusive flock on a lock file beside the store, read,
// change, bump the revision and replace the file atomically (rename), so
// readers never see a half-written store. Mirror (mirror.go) turns the
// store into a kubernetes.Interface, so an agent in a lab reads its objects
// through the same informers it uses against a real API server.
package labstore

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// FileName is the store's file name in its directory.
const FileName = "store.json"

// Snapshot is the whole content of a store at one revision.
type Snapshot struct {
	Revision       int64                       `json:"revision"`
	Nodes          []corev1.Node               `json:"nodes"`
	Pods           []corev1.Pod                `json:"pods"`
	Services       []corev1.Service            `json:"services"`
	EndpointSlices []discoveryv1.EndpointSlice `json:"endpointSlices"`
}

// Store is a store file. The zero value is not usable; use Open.
type Store struct {
	dir string
}

// Open returns the store in dir. It does no I/O.
func Open(dir string) *Store { return &Store{dir: dir} }

// Dir is the directory holding the store.
func (s *Store) Dir() string { return s.dir }

// Path is the store file.
func (s *Store) Path() string { return filepath.Join(s.dir, FileName) }

// Read returns the current snapshot; a store never written is empty.
func (s *Store) Read() (*Snapshot, error) {
	b, err := os.ReadFile(s.Path())
	if errors.Is(err, os.ErrNotExist) {
		return &Snapshot{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read lab store: %w", err)
	}
	var snap Snapshot
	if err := json.Unmarshal(b, &snap); err != nil {
		return nil, fmt.Errorf("read lab store %s: %w", s.Path(), err)
	}
	return &snap, nil
}

// Update applies fn to the current snapshot under the store's lock and
// writes the result as the next revision. When fn fails nothing is
// written.
func (s *Store) Update(fn func(*Snapshot) error) error {
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		return fmt.Errorf("lab store: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(s.dir, FileName+".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return fmt.Errorf("lab store lock: %w", err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("lab store lock: %w", err)
	}
	snap, err := s.Read()
	if err != nil {
		return err
	}
	if err := fn(snap); err != nil {
		return err
	}
	snap.Revision++
	b, err := json.Marshal(snap)
	if err != nil {
		return fmt.Errorf("write lab store: %w", err)
	}
	tmp := s.Path() + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("write lab store: %w", err)
	}
	if err := os.Rename(tmp, s.Path()); err != nil {
		return fmt.Errorf("write lab store: %w", err)
	}
	return nil
}
