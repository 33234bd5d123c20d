package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/kdive/kdive/internal/fileutil"
)

// RunDir holds every lab's runtime state: /run/kdive/labs/NAME/. Nothing of
// a lab is written outside /run.
var RunDir = "/run/kdive/labs"

// Dir is the state directory of the named lab.
func Dir(name string) string { return filepath.Join(RunDir, name) }

const stateFile = "lab.json"

// State is what a running lab records about itself.
type State struct {
	Plan    *Plan     `json:"plan"`
	Created time.Time `json:"created"`
	// LabFile is the lab file the lab was made from, as given.
	LabFile string `json:"labFile"`
	// BinDir holds the binaries the lab runs (kdive's directory).
	BinDir string `json:"binDir,omitempty"`
}

// ErrNoLab is wrapped by errors about a lab that does not exist.
var ErrNoLab = errors.New("no such lab")

// Load reads the state of the named lab.
func Load(name string) (*State, error) {
	b, err := os.ReadFile(filepath.Join(Dir(name), stateFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("lab %q: %w (kdive lab list shows the labs)", name, ErrNoLab)
	}
	if err != nil {
		return nil, fmt.Errorf("read lab %q: %w", name, err)
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("read lab %q: %s: %w", name, stateFile, err)
	}
	return &s, nil
}

func (s *State) save() error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	if err := fileutil.WriteAtomic(filepath.Join(Dir(s.Plan.Name), stateFile), b, 0o644); err != nil {
		return fmt.Errorf("write lab state: %w", err)
	}
	return nil
}

// Names lists the labs that have a state directory, sorted.
func Names() ([]string, error) {
	entries, err := os.ReadDir(RunDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list labs: %w", err)
	}
	var names []string
	for _, e := range entries {
		if e.IsDir() {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	return names, nil
}
