// Package fileutil holds the two file disciplines kdive's state relies
// on: a file is replaced or removed atomically and durably (a reader sees
// the old content or the new, never half of it, and once the call returns
// a power cut keeps the change: the file and then its directory are
// synced), and processes that share a state directory take turns through
// flock(2).
package fileutil

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// WriteAtomic replaces path with data: a temporary dot file in the same
// directory (".NAME.tmp-*", which readers of the directory can skip),
// written, given perm, synced, renamed over path, and the directory
// synced, so that the rename, and with it the new content, survives a
// power cut. On error nothing is left behind and path is unchanged (or,
// if only the directory's sync failed, replaced but maybe not durably).
func WriteAtomic(path string, data []byte, perm os.FileMode) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			os.Remove(f.Name())
			err = fmt.Errorf("write %s: %w", path, err)
		}
	}()
	_, err = f.Write(data)
	err = errors.Join(err, f.Chmod(perm), f.Sync(), f.Close())
	if err != nil {
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return err
	}
	return syncDir(filepath.Dir(path))
}

// Remove removes the files of one directory durably: each is removed (a
// missing one is no error) and then the directory synced, so that none
// comes back after a power cut. A released IP address that came back
// would be handed out twice.
func Remove(dir string, names ...string) error {
	for _, n := range names {
		if err := os.Remove(filepath.Join(dir, n)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("remove from %s: %w", dir, err)
	}
	return nil
}

// syncDir syncs a directory: its entries (a rename, a removal) reach the
// disk.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync directory: %w", err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}

// WithLock runs fn holding an exclusive flock(2) on dir/name (created with
// mode 0600; dir with dirPerm if missing). flock locks belong to an open
// file description and each call opens the file anew, so goroutines of one
// process exclude each other as processes do; closing releases the lock.
func WithLock(dir, name string, dirPerm os.FileMode, fn func() error) error {
	if err := os.MkdirAll(dir, dirPerm); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	path := filepath.Join(dir, name)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("open lock: %w", err)
	}
	defer f.Close()
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("lock %s: %w", path, err)
	}
	return fn()
}
