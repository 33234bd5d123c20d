package ipam

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/kdive/kdive/internal/fileutil"
)

const (
	lockFile = "lock"
	lastFile = "last_reserved_ip"
	tmpPre   = ".tmp-"
)

// Store is a node's pod addresses, kept in a directory. Every method takes
// the directory's lock for its whole duration, so any number of goroutines
// and processes may use stores on the same directory at once.
type Store struct {
	dir   string
	block netip.Prefix
}

// New returns the store of block in dir. It checks its arguments and does
// no I/O; the directory is created by the first operation.
func New(dir string, block netip.Prefix) (*Store, error) {
	if !filepath.IsAbs(dir) {
		return nil, fmt.Errorf("ipam: data directory %q is not an absolute path", dir)
	}
	if err := CheckBlock(block); err != nil {
		return nil, fmt.Errorf("ipam: %w", err)
	}
	return &Store{dir: filepath.Clean(dir), block: block}, nil
}

// Dir is the store's directory.
func (s *Store) Dir() string { return s.dir }

// Block is the pod block addresses come from.
func (s *Store) Block() netip.Prefix { return s.block }

// Allocate gives a an address of the block and records it. It is idempotent:
// an attachment that already holds an address of the block gets that one
// back. A full block is an error wrapping ErrFull.
func (s *Store) Allocate(a Attachment) (netip.Addr, error) {
	if err := a.Validate(); err != nil {
		return netip.Addr{}, fmt.Errorf("ipam: allocate: %w", err)
	}
	var got netip.Addr
	err := s.locked(func() error {
		allocs, err := s.read()
		if err != nil {
			return err
		}
		taken := make(map[netip.Addr]bool, len(allocs))
		inUse := 0
		for _, al := range allocs {
			if al.Attachment == a && s.block.Contains(al.Addr) {
				got = al.Addr
				return nil
			}
			taken[al.Addr] = true
			if usable(s.block, al.Addr) {
				inUse++
			}
		}
		free, ok := s.nextFree(taken)
		if !ok {
			return &fullError{block: s.block, inUse: inUse}
		}
		if err := s.writeFile(free.String(), a.ContainerID+"\n"+a.IfName+"\n"); err != nil {
			return err
		}
		// The marker only steers the next search; losing it is harmless.
		_ = s.writeFile(lastFile, free.String()+"\n")
		got = free
		return nil
	})
	if err != nil {
		return netip.Addr{}, fmt.Errorf("ipam: allocate for %s: %w", a, err)
	}
	return got, nil
}

// nextFree searches round-robin from after the last address reserved.
func (s *Store) nextFree(taken map[netip.Addr]bool) (netip.Addr, bool) {
	start := first(s.block)
	if b, err := os.ReadFile(filepath.Join(s.dir, lastFile)); err == nil {
		if prev, err := netip.ParseAddr(strings.TrimSpace(string(b))); err == nil && usable(s.block, prev) {
			start = prev.Next()
		}
	}
	a := start
	for range Capacity(s.block) {
		if !usable(s.block, a) {
			a = first(s.block)
		}
		if !taken[a] {
			return a, true
		}
		a = a.Next()
	}
	return netip.Addr{}, false
}

// Release frees every address a holds and returns them. Releasing an
// attachment that holds none is not an error.
func (s *Store) Release(a Attachment) ([]netip.Addr, error) {
	if err := a.Validate(); err != nil {
		return nil, fmt.Errorf("ipam: release: %w", err)
	}
	var freed []netip.Addr
	err := s.locked(func() error {
		allocs, err := s.read()
		if err != nil {
			return err
		}
		for _, al := range allocs {
			if al.Attachment != a {
				continue
			}
			if err := s.remove(al.Addr); err != nil {
				return err
			}
			freed = append(freed, al.Addr)
		}
		return nil
	})
	if err != nil {
		return freed, fmt.Errorf("ipam: release %s: %w", a, err)
	}
	return freed, nil
}

// GC frees every allocation whose attachment is not in valid (including
// entries that could not be read back) and returns what it freed.
func (s *Store) GC(valid []Attachment) ([]Allocation, error) {
	keep := make(map[Attachment]bool, len(valid))
	for _, a := range valid {
		keep[a] = true
	}
	var freed []Allocation
	err := s.locked(func() error {
		allocs, err := s.read()
		if err != nil {
			return err
		}
		for _, al := range allocs {
			if al.Attachment != (Attachment{}) && keep[al.Attachment] {
				continue
			}
			if err := s.remove(al.Addr); err != nil {
				return err
			}
			freed = append(freed, al)
		}
		return nil
	})
	if err != nil {
		return freed, fmt.Errorf("ipam: gc: %w", err)
	}
	return freed, nil
}

// List returns every allocation, ordered by address. It may include
// addresses outside the current block (left from an earlier block).
func (s *Store) List() ([]Allocation, error) {
	var out []Allocation
	err := s.locked(func() (err error) {
		out, err = s.read()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("ipam: list: %w", err)
	}
	return out, nil
}

// Lookup returns the address a holds in the block, if any.
func (s *Store) Lookup(a Attachment) (netip.Addr, bool, error) {
	allocs, err := s.List()
	if err != nil {
		return netip.Addr{}, false, err
	}
	for _, al := range allocs {
		if al.Attachment == a && s.block.Contains(al.Addr) {
			return al.Addr, true, nil
		}
	}
	return netip.Addr{}, false, nil
}

// InUse counts the block's allocated addresses; Capacity(block) minus it
// is how many pods still fit.
func (s *Store) InUse() (int, error) {
	allocs, err := s.List()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, al := range allocs {
		if usable(s.block, al.Addr) {
			n++
		}
	}
	return n, nil
}

// locked runs fn holding the store's exclusive lock.
func (s *Store) locked(fn func() error) error {
	return fileutil.WithLock(s.dir, lockFile, 0o755, fn)
}

// read loads every allocation file. Call it with the lock held.
func (s *Store) read() ([]Allocation, error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("read data directory: %w", err)
	}
	var out []Allocation
	for _, e := range entries {
		addr, err := netip.ParseAddr(e.Name())
		if err != nil || !e.Type().IsRegular() {
			continue // lock, marker, temporary files
		}
		al := Allocation{Addr: addr}
		b, err := os.ReadFile(filepath.Join(s.dir, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("read allocation %s: %w", e.Name(), err)
		}
		if lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n"); len(lines) == 2 {
			al.Attachment = Attachment{ContainerID: lines[0], IfName: lines[1]}
		}
		out = append(out, al)
	}
	slices.SortFunc(out, func(x, y Allocation) int { return x.Addr.Compare(y.Addr) })
	return out, nil
}

// writeFile replaces name in the store atomically.
func (s *Store) writeFile(name, content string) error {
	return fileutil.WriteAtomic(filepath.Join(s.dir, name), []byte(content), 0o644)
}

// remove frees a durably: a freed address that came back after a power
// cut would be handed to a second pod while the first still holds it.
func (s *Store) remove(a netip.Addr) error {
	if err := fileutil.Remove(s.dir, a.String()); err != nil {
		return fmt.Errorf("free %s: %w", a, err)
	}
	return nil
}

// CheckWritable creates the store's directory if needed and proves it can
// hold allocations by writing and removing a temporary file there.
func (s *Store) CheckWritable() error {
	err := s.locked(func() error {
		if err := s.writeFile(tmpPre+"probe", "probe\n"); err != nil {
			return err
		}
		return fileutil.Remove(s.dir, tmpPre+"probe")
	})
	if err != nil {
		return fmt.Errorf("ipam: data directory %s is not writable: %w", s.dir, err)
	}
	return nil
}
