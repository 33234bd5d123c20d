package nft

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/ktest"
)

func TestSession(t *testing.T) {
	ktest.RequireFeature(t, kernel.FeatureNFTables)
	ns := ktest.NewNetNS(t)
	ctx := context.Background()
	must(t, ns.Nft(ctx, "table ip kdive-t {\n\tset s {\n\t\ttype ipv4_addr\n\t}\n\tchain c {\n\t}\n}\n"))
	s := newSession(ns)
	t.Cleanup(func() { s.close() })
	list := func() string {
		out, err := ns.Run(ctx, "", "nft", "list", "set", "ip", "kdive-t", "s")
		must(t, err)
		return out
	}
	must(t, s.apply(ctx, []string{"add element ip kdive-t s { 192.0.2.1 }", "add element ip kdive-t s { 192.0.2.2 }"}))
	if got := list(); !strings.Contains(got, "192.0.2.1") || !strings.Contains(got, "192.0.2.2") {
		t.Fatalf("set after Apply:\n%s", got)
	}
	// One refused command refuses the whole transaction and is named.
	err := s.apply(ctx, []string{
		"delete element ip kdive-t s { 192.0.2.1 }",
		"add element ip kdive-t s { 192.0.2.3 }",
		"add rule ip kdive-t c jump no-such-chain",
	})
	var nerr *sessionError
	if !errors.As(err, &nerr) || len(nerr.Commands) != 1 || nerr.Commands[0] != 2 {
		t.Fatalf("Apply of a bad transaction = %#v, want a sessionError pointing at command 2", err)
	}
	if want := "nft: Error: Could not process rule: No such file or directory: add rule ip kdive-t c jump no-such-chain"; err.Error() != want {
		t.Errorf("error = %q, want %q", err, want)
	}
	if got := list(); !strings.Contains(got, "192.0.2.1") || strings.Contains(got, "192.0.2.3") {
		t.Fatalf("a refused transaction was applied in part:\n%s", got)
	}
	// The session goes on after an error, and is quick.
	start := time.Now()
	for i := range 20 {
		must(t, s.apply(ctx, []string{fmt.Sprintf("add element ip kdive-t s { 192.0.2.%d }", 10+i), "delete element ip kdive-t s { 192.0.2.1 }", "add element ip kdive-t s { 192.0.2.1 }"}))
	}
	t.Logf("20 transactions with deletions in %v", time.Since(start))
	if err := s.apply(ctx, []string{"add element ip kdive-t s { 192.0.2.200 }\nflush ruleset"}); err == nil {
		t.Errorf("a command spanning lines was accepted")
	}
	// After Close, Apply starts a new process.
	must(t, s.close())
	must(t, s.apply(ctx, []string{"add element ip kdive-t s { 192.0.2.99 }"}))
	if got := list(); !strings.Contains(got, "192.0.2.99") {
		t.Errorf("Apply after Close did not apply:\n%s", got)
	}
	// A cancelled context ends the process; the next Apply works again.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := s.apply(cctx, []string{"add element ip kdive-t s { 192.0.2.98 }"}); !errors.Is(err, context.Canceled) {
		t.Logf("Apply with a cancelled context = %v (it may finish first)", err)
	}
	must(t, s.apply(ctx, []string{"add element ip kdive-t s { 192.0.2.97 }"}))
}

// TestSessionWithoutTerminfo: in a container image without a terminfo
// database, interactive nft's line editor warns on stderr at start; that
// is no refusal, and the first transaction must apply. (A wrapper first on
// PATH stands for such an nft: it writes libedit's warning, then runs the
// real one.)
func TestSessionWithoutTerminfo(t *testing.T) {
	ktest.RequireFeature(t, kernel.FeatureNFTables)
	real, err := exec.LookPath("nft")
	if err != nil {
		t.Skip(err)
	}
	dir := t.TempDir()
	wrapper := "#!/bin/sh\nprintf 'Cannot read termcap database;\\nusing dumb terminal settings.\\n' >&2\nexec " + real + " \"$@\"\n"
	if err := os.WriteFile(filepath.Join(dir, "nft"), []byte(wrapper), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	ns := ktest.NewNetNS(t)
	ctx := context.Background()
	must(t, ns.Nft(ctx, "table ip kdive-t {\n\tset s {\n\t\ttype ipv4_addr\n\t}\n}\n"))
	s := newSession(ns)
	t.Cleanup(func() { s.close() })
	if err := s.apply(ctx, []string{"add element ip kdive-t s { 192.0.2.1 }"}); err != nil {
		t.Fatalf("first Apply after the editor's warning: %v", err)
	}
	out, err := ns.Run(ctx, "", real, "list", "set", "ip", "kdive-t", "s")
	must(t, err)
	if !strings.Contains(out, "192.0.2.1") {
		t.Errorf("set after Apply:\n%s", out)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
