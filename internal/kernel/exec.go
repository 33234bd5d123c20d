package kernel

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Run executes a program inside the namespace and returns its standard
// output. A non-zero exit is an error carrying the program's stderr.
func (n *NetNS) Run(ctx context.Context, stdin string, name string, args ...string) (string, error) {
	var out, errb bytes.Buffer
	err := n.Do(func() error {
		cmd := exec.CommandContext(ctx, name, args...)
		if stdin != "" {
			cmd.Stdin = strings.NewReader(stdin)
		}
		cmd.Stdout, cmd.Stderr = &out, &errb
		return cmd.Run()
	})
	if err != nil {
		msg := strings.TrimSpace(errb.String())
		if msg == "" {
			return out.String(), fmt.Errorf("%s %s in %s: %w", name, strings.Join(args, " "), n, err)
		}
		return out.String(), fmt.Errorf("%s %s in %s: %w: %s", name, strings.Join(args, " "), n, err, msg)
	}
	return out.String(), nil
}

// Start starts a long-running process inside the namespace. The caller owns
// the returned command (Wait, Process.Kill).
func (n *NetNS) Start(cmd *exec.Cmd) error {
	return n.Do(func() error {
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("start %s in %s: %w", cmd.Path, n, err)
		}
		return nil
	})
}

// Nft applies an nft script (`nft -f -`) inside the namespace, atomically.
func (n *NetNS) Nft(ctx context.Context, script string) error {
	_, err := n.Run(ctx, script, "nft", "-f", "-")
	return err
}

// ExecIn replaces the current process with argv[0] running inside the
// network namespace at path, with the current stdio and environment. It
// only returns on error.
func ExecIn(path string, argv []string) error {
	if len(argv) == 0 {
		return errors.New("exec: no command given")
	}
	bin, err := exec.LookPath(argv[0])
	if err != nil {
		return fmt.Errorf("exec %s: %w", argv[0], err)
	}
	fd, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", path, err)
	}
	// execve keeps the calling thread's namespaces; the thread must stay
	// locked between setns and execve.
	runtime.LockOSThread()
	if err := netns.Set(fd); err != nil {
		fd.Close()
		runtime.UnlockOSThread()
		return fmt.Errorf("enter netns %s: %w", path, err)
	}
	fd.Close()
	err = unix.Exec(bin, argv, os.Environ())
	// Still here: exec failed and this thread is in the wrong namespace;
	// keep it locked so the runtime retires it.
	return fmt.Errorf("exec %s in %s: %w", bin, path, err)
}
