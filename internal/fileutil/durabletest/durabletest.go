// Package durabletest checks that code makes its file changes durable:
// it runs a test's child in a process under strace(1) and returns the
// file system calls the kernel saw, with the paths of their file
// descriptors, so a test can require the order a power cut needs (file
// synced, then renamed or removed, then its directory synced).
//
//	calls := durabletest.Trace(t, "TestFooChild", "FOO_DIR="+dir)
//	rename := calls.Index(0, "rename", dir+"/a>")
//	calls.Index(rename+1, "fsync", "<"+dir+">")
package durabletest

import (
	"bufio"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// Call is one system call: its name (rename for renameat and renameat2,
// unlink for unlinkat, fsync for fdatasync) and its arguments as strace
// prints them with -y (a descriptor as 3</dir/file>).
type Call struct {
	Name, Args string
}

// Calls are the calls traced, in order.
type Calls []Call

// traced are the calls Trace records.
const traced = "fsync,fdatasync,rename,renameat,renameat2,unlink,unlinkat"

// A call is printed on one line, or, when another thread's call comes in
// between, in two: "PID NAME(ARGS <unfinished ...>" and later
// "PID <... NAME resumed>REST) = RESULT".
var (
	line       = regexp.MustCompile(`^(?:(\d+)\s+)?(\w+)\((.*)\)\s+= (-?\d+)`)
	unfinished = regexp.MustCompile(`^(?:(\d+)\s+)?(\w+)\((.*) <unfinished \.\.\.>$`)
	resumed    = regexp.MustCompile(`^(?:(\d+)\s+)?<\.\.\. (\w+) resumed>(.*)\)\s+= (-?\d+)`)
)

// Trace runs the test binary's test child (a test that does the work when
// env says so and skips otherwise) under strace and returns its
// successful file system calls. It skips when strace is missing (make
// test's deps install it) and fails when the child fails.
func Trace(t *testing.T, child string, env ...string) Calls {
	t.Helper()
	strace, err := exec.LookPath("strace")
	if err != nil {
		t.Skip("needs strace (Debian package strace; make deps installs it)")
	}
	out := filepath.Join(t.TempDir(), "strace.out")
	cmd := exec.Command(strace, "-f", "-qq", "-y", "-e", "trace="+traced, "-o", out,
		os.Args[0], "-test.run=^"+child+"$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), env...)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("strace %s: %v\n%s", child, err, b)
	} else if !strings.Contains(string(b), "--- PASS: "+child) {
		t.Fatalf("%s did not run (skipped?):\n%s", child, b)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	calls, err := parse(f)
	if err != nil {
		t.Fatal(err)
	}
	return calls
}

// parse reads strace's output: the successful calls, in order.
func parse(r io.Reader) (Calls, error) {
	var calls Calls
	pending := map[string]string{} // pid -> the unfinished call's arguments
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		text := sc.Text()
		if m := unfinished.FindStringSubmatch(text); m != nil {
			pending[m[1]+" "+m[2]] = m[3]
			continue
		}
		var name, args, result string
		if m := line.FindStringSubmatch(text); m != nil {
			name, args, result = m[2], m[3], m[4]
		} else if m := resumed.FindStringSubmatch(text); m != nil {
			key := m[1] + " " + m[2]
			name, args, result = m[2], pending[key]+m[3], m[4]
			delete(pending, key)
		} else {
			continue
		}
		if result != "0" {
			continue // failed calls
		}
		switch name {
		case "renameat", "renameat2":
			name = "rename"
		case "unlinkat":
			name = "unlink"
		case "fdatasync":
			name = "fsync"
		}
		calls = append(calls, Call{name, args})
	}
	return calls, sc.Err()
}

// Index is the index of the first call at or after from named name whose
// arguments contain every one of args; -1 if none.
func (cs Calls) Index(from int, name string, args ...string) int {
	for i := max(from, 0); i < len(cs); i++ {
		if cs[i].Name != name {
			continue
		}
		ok := true
		for _, a := range args {
			ok = ok && strings.Contains(cs[i].Args, a)
		}
		if ok {
			return i
		}
	}
	return -1
}

func (cs Calls) String() string {
	var b strings.Builder
	for i, c := range cs {
		b.WriteString(strings.Repeat(" ", 4))
		b.WriteString(c.Name + "(" + c.Args + ")")
		if i < len(cs)-1 {
			b.WriteByte('\n')
		}
	}
	return b.String()
}
