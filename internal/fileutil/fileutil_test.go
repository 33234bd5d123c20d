package fileutil

import (
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/kdive/kdive/internal/fileutil/durabletest"
)

func TestWriteAtomic(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "conf")
	for _, content := range []string{"one", "two, longer"} {
		if err := WriteAtomic(path, []byte(content), 0o640); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(path)
		if err != nil || string(b) != content {
			t.Errorf("content %q, %v; want %q", b, err, content)
		}
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, want 0640", st.Mode().Perm())
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("%d entries: a temporary file was left", len(ents))
	}
	// A directory that does not exist: an error naming the path, nothing written.
	if err := WriteAtomic(filepath.Join(dir, "missing", "x"), []byte("x"), 0o600); err == nil {
		t.Error("writing into a missing directory succeeded")
	}
}

func TestWithLockExcludes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	var mu sync.Mutex
	inside, maxInside := 0, 0
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := WithLock(dir, "lock", 0o700, func() error {
				mu.Lock()
				inside++
				maxInside = max(maxInside, inside)
				mu.Unlock()
				time.Sleep(5 * time.Millisecond) // a second holder would overlap here
				mu.Lock()
				inside--
				mu.Unlock()
				return nil
			})
			if err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if maxInside != 1 {
		t.Errorf("%d holders at once, want 1", maxInside)
	}
}

// TestDurable requires, of the calls the kernel sees, what a power cut
// needs: WriteAtomic syncs the temporary file, renames it over the path
// and then syncs the directory (else the rename, and with it the new
// content, may be lost); Remove syncs the directory after the unlink
// (else the file may come back).
func TestDurable(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "old"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	calls := durabletest.Trace(t, "TestDurableChild", "KDIVE_DURABLE_DIR="+dir)
	tmpSync := calls.Index(0, "fsync", dir+"/.new.tmp-")
	rename := calls.Index(tmpSync+1, "rename", dir+"/.new.tmp-", `"`+dir+`/new"`)
	dirSync := calls.Index(rename+1, "fsync", "<"+dir+">")
	// The child's Remove comes after WriteAtomic returned.
	unlink := calls.Index(0, "unlink", `"`+dir+`/old"`)
	if tmpSync < 0 || rename < 0 || dirSync < 0 || dirSync > unlink {
		t.Errorf("WriteAtomic: want fsync(temporary file), rename(it, new), fsync(directory) in that order before it returns; got (fsync %d, rename %d, fsync %d, Remove's unlink %d):\n%s", tmpSync, rename, dirSync, unlink, calls)
	}
	if unlink < 0 || calls.Index(unlink+1, "fsync", "<"+dir+">") < 0 {
		t.Errorf("Remove: want unlink(old), then fsync(directory); got:\n%s", calls)
	}
}

// TestDurableChild is TestDurable's traced child.
func TestDurableChild(t *testing.T) {
	dir := os.Getenv("KDIVE_DURABLE_DIR")
	if dir == "" {
		t.Skip("only runs as a child of TestDurable")
	}
	if err := WriteAtomic(filepath.Join(dir, "new"), []byte("new"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Remove(dir, "old", "missing"); err != nil {
		t.Fatal(err)
	}
}
