package kernel

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// PidsInNetNS returns the processes whose network namespace is the one at
// path (a named namespace file or /proc/PID/ns/net).
func PidsInNetNS(path string) ([]int, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nil, fmt.Errorf("stat netns %s: %w", path, err)
	}
	want := fmt.Sprintf("net:[%d]", st.Ino)
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		link, err := os.Readlink("/proc/" + e.Name() + "/ns/net")
		if err == nil && link == want {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// KillNetNSProcesses stops every process in the namespace at path: SIGTERM,
// then SIGKILL for those still there after grace. It returns when they are
// gone or reports the ones that would not die.
func KillNetNSProcesses(path string, grace time.Duration) error {
	pids, err := PidsInNetNS(path)
	if err != nil || len(pids) == 0 {
		return err
	}
	for _, p := range pids {
		_ = syscall.Kill(p, syscall.SIGTERM)
	}
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		if !anyAlive(pids) {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, p := range pids {
		_ = syscall.Kill(p, syscall.SIGKILL)
	}
	for range 100 {
		if !anyAlive(pids) {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("processes %v in netns %s survived SIGKILL", pids, path)
}

func anyAlive(pids []int) bool {
	for _, p := range pids {
		err := syscall.Kill(p, 0)
		if err == nil || !errors.Is(err, syscall.ESRCH) {
			// A zombie still answers kill(0); it is gone from the
			// namespace's point of view once reaped, which its parent does.
			if isZombie(p) {
				continue
			}
			return true
		}
	}
	return false
}

func isZombie(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	// The state follows the command name in parentheses.
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] == ')' && i+2 < len(b) {
			return b[i+2] == 'Z' || b[i+2] == 'X'
		}
	}
	return false
}
