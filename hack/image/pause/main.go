// Command pause holds a pod's namespaces open, as Kubernetes' pause
// container does: the lab's registry.k8s.io/pause image is this program,
// built static (make images).
//
// It waits for SIGINT or SIGTERM and then exits 0. As PID 1 of a pod that
// shares its PID namespace it also reaps the zombies orphaned to it.
package main

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// version is the pause image's tag.
const version = "3.10.2"

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-v" {
		fmt.Println("pause.go version:", version)
		return
	}
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "Warning: pause should be the first process")
	}
	// Two channels, so that a burst of SIGCHLD can never crowd out the
	// signal to stop (a full channel drops the signal).
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	child := make(chan os.Signal, 1)
	signal.Notify(child, syscall.SIGCHLD)
	for {
		select {
		case s := <-stop:
			fmt.Fprintf(os.Stderr, "Shutting down, got signal: %v\n", s)
			os.Exit(0)
		case <-child:
			reap()
		}
	}
}

// reap collects every child that has exited. Signals coalesce, so one
// SIGCHLD may stand for many.
func reap() {
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if pid <= 0 || err != nil {
			return
		}
	}
}
