// Package testbin gives tests kdive's two programs, kdive and kdive-cni,
// to run as a user, a lab or a container runtime runs them: the ones `make
// build` put in KDIVE_TEST_BINDIR (make test sets it to bin/; in the test
// VM nothing can be built), else built once per test binary, on first use,
// into a temporary directory that Main removes.
//
//	func TestMain(m *testing.M) { os.Exit(testbin.Main(m)) }
//
//	kdive := testbin.Path(t, testbin.Kdive)
package testbin

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// The programs, by the name they have in the directory.
const (
	Kdive    = "kdive"
	KdiveCNI = "kdive-cni"
)

// packages are the programs' import paths.
var packages = map[string]string{
	Kdive:    "github.com/kdive/kdive/cmd/kdive",
	KdiveCNI: "github.com/kdive/kdive/cmd/kdive-cni",
}

var (
	once   sync.Once
	dir    string
	built  bool // dir is ours to remove
	err    error
	inMain bool // Main runs the tests, so it removes what was built
)

// Dir returns the directory that holds both programs, side by side as
// `make build` puts them (the lab finds kdive-cni beside kdive).
func Dir() (string, error) {
	once.Do(func() {
		if d := os.Getenv("KDIVE_TEST_BINDIR"); d != "" {
			dir = d
			return
		}
		dir, err = os.MkdirTemp("", "kdive-test-bin-")
		if err != nil {
			return
		}
		built = true
		for name, pkg := range packages {
			out, e := exec.Command("go", "build", "-o", filepath.Join(dir, name), pkg).CombinedOutput()
			if e != nil {
				err = fmt.Errorf("build %s: %w\n%s", pkg, e, out)
				return
			}
		}
	})
	return dir, err
}

// Path returns the path of the program name (Kdive or KdiveCNI), failing
// the test when it cannot be built or is not there.
func Path(t testing.TB, name string) string {
	t.Helper()
	if !inMain {
		t.Fatal("testbin: the package's TestMain must run its tests through testbin.Main, which removes what was built")
	}
	if _, ok := packages[name]; !ok {
		t.Fatalf("testbin: no program %q", name)
	}
	d, err := Dir()
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(d, name)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("testbin: %v (KDIVE_TEST_BINDIR=%s: `make build` puts it there)", err, os.Getenv("KDIVE_TEST_BINDIR"))
	}
	return p
}

// Main runs the tests and then removes the programs Dir built, returning
// the exit code for os.Exit.
func Main(m *testing.M) int {
	inMain = true
	code := m.Run()
	if built {
		os.RemoveAll(dir)
	}
	return code
}
