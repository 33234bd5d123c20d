// Package version holds the build's version and commit, set at link time by
// the Makefile (-ldflags -X), and reports them with the Go version.
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Set with -ldflags "-X github.com/kdive/kdive/internal/version.Version=...".
var (
	Version = "v0.0.0-dev"
	Commit  = ""
)

// Info is what `kdive version` prints.
type Info struct {
	Version   string `json:"version"`
	Commit    string `json:"commit"`
	GoVersion string `json:"goVersion"`
}

// Get returns the version of this binary. When no commit was stamped at link
// time it falls back to the VCS revision the Go toolchain recorded, if any.
func Get() Info {
	commit := Commit
	if commit == "" {
		if bi, ok := debug.ReadBuildInfo(); ok {
			for _, s := range bi.Settings {
				if s.Key == "vcs.revision" {
					commit = s.Value
				}
			}
		}
	}
	if commit == "" {
		commit = "unknown"
	}
	return Info{Version: Version, Commit: commit, GoVersion: runtime.Version()}
}

func (i Info) String() string {
	return fmt.Sprintf("kdive %s (commit %s, %s)", i.Version, i.Commit, i.GoVersion)
}
