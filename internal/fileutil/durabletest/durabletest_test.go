package durabletest

import (
	"strings"
	"testing"
)

// TestParse: calls on one line and calls split by another thread's into
// an unfinished and a resumed half are read alike; failed calls are not.
func TestParse(t *testing.T) {
	out := `41 fsync(8</d/.a.tmp-1>) = 0
41 renameat(AT_FDCWD</w>, "/d/.a.tmp-1", AT_FDCWD</w>, "/d/a") = 0
41 unlinkat(AT_FDCWD</w>, "/d/b", 0 <unfinished ...>
42 fsync(3</other>) = 0
41 <... unlinkat resumed>)              = 0
41 fsync(8</d> <unfinished ...>
43 unlinkat(AT_FDCWD</w>, "/d/missing", 0) = -1 ENOENT (No such file or directory)
41 <... fsync resumed>)                  = 0
`
	calls, err := parse(strings.NewReader(out))
	if err != nil {
		t.Fatal(err)
	}
	want := `    fsync(8</d/.a.tmp-1>)
    rename(AT_FDCWD</w>, "/d/.a.tmp-1", AT_FDCWD</w>, "/d/a")
    fsync(3</other>)
    unlink(AT_FDCWD</w>, "/d/b", 0)
    fsync(8</d>)`
	if got := calls.String(); got != want {
		t.Errorf("parsed:\n%s\nwant:\n%s", got, want)
	}
	if i := calls.Index(calls.Index(0, "unlink", `"/d/b"`)+1, "fsync", "<"+"/d>"); i != 4 {
		t.Errorf("the directory's fsync after the unlink at %d, want 4", i)
	}
}
