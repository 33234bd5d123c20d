// Package labstore is a lab's object store: the Kubernetes objects of one
// lab (Nodes, Pods, Services, EndpointSlices) in a single JSON file under
// the lab's run directory, written by the lab's control-plane commands
// (lab up, apply, delete) and read by every node agent of the lab.
//
// Writers take an exclusive flock on a lock file beside the store, read,
// change, bump the revision and replace the file atomically and durably
// (fileutil.WriteAtomic), so readers never see a half-written store; the
// revision before is kept beside it (store.json.prev). A store that does
// not parse (edited by hand, a disk fault) is refused with a
// *CorruptError that says how to recover, never read as empty: an empty
// store would tell every agent that every object was deleted. Mirror (mirror.go) turns the
// store into a kubernetes.Interface, so an agent in a lab reads its objects
// through the same informers it uses against a real API server.
package labstore

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/kdive/kdive/internal/fileutil"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// FileName is the store's file name in its directory.
const FileName = "store.json"

// prevSuffix names the previous revision's file: store.json.prev.
const prevSuffix = ".prev"

// CorruptError is a store file that does not parse. Read and Update
// return it; a Mirror keeps serving the last snapshot it read.
type CorruptError struct {
	Path string
	Err  error
	// PrevRevision is the revision store.json.prev holds, 0 when it is
	// missing or does not parse either.
	PrevRevision int64
}

func (e *CorruptError) Error() string {
	msg := fmt.Sprintf("lab store %s is corrupt (%v); the lab's agents keep serving the objects they last read, and changes are refused until it is repaired: ", e.Path, e.Err)
	if e.PrevRevision > 0 {
		return msg + fmt.Sprintf("%s%s holds revision %d, the one before the last change: copy it over %s, then apply the last change again", e.Path, prevSuffix, e.PrevRevision, FileName)
	}
	return msg + "no earlier revision is kept: bring the lab down and up again"
}

func (e *CorruptError) Unwrap() error { return e.Err }

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
	snap, err := parse(b)
	if err != nil {
		cerr := &CorruptError{Path: s.Path(), Err: err}
		if pb, err := os.ReadFile(s.Path() + prevSuffix); err == nil {
			if prev, err := parse(pb); err == nil {
				cerr.PrevRevision = prev.Revision
			}
		}
		return nil, cerr
	}
	return snap, nil
}

// parse reads a store file; a syntax error says where.
func parse(b []byte) (*Snapshot, error) {
	var snap Snapshot
	err := json.Unmarshal(b, &snap)
	if se := (*json.SyntaxError)(nil); errors.As(err, &se) {
		return nil, fmt.Errorf("%w at byte %d of %d", err, se.Offset, len(b))
	}
	if err != nil {
		return nil, err
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
	// The revision being replaced stays as store.json.prev (a link: no
	// copy), the way back should this one be damaged.
	prev := s.Path() + prevSuffix
	if err := os.Remove(prev); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("write lab store: %w", err)
	}
	if err := os.Link(s.Path(), prev); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("write lab store: %w", err)
	}
	if err := fileutil.WriteAtomic(s.Path(), b, 0o644); err != nil {
		return fmt.Errorf("write lab store: %w", err)
	}
	return nil
}
