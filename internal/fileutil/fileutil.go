// Package fileutil holds the two file disciplines kdive's state relies
// on: a file is replaced atomically (a reader sees the old content or the
// new, never half of it, even across a crash), and processes that share a
// state directory take turns through flock(2).
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
// written, given perm, synced, then renamed over path. On error nothing
// is left behind and path is unchanged.
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
	return os.Rename(f.Name(), path)
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
