package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/kdive/kdive/internal/kernel"
)

// Source says where a lab file comes from: a preset name or file contents.
type Source struct {
	Preset string // used when File is empty
	File   []byte
	// FileName is the file's name, for messages.
	FileName string
}

// Load the lab file the source names.
func (s Source) load() (*File, string, error) {
	if len(s.File) > 0 {
		f, err := Parse(s.File)
		if err != nil {
			return nil, "", fmt.Errorf("%s: %w", s.FileName, err)
		}
		return f, "", nil
	}
	preset := s.Preset
	if preset == "" {
		preset = DefaultPreset
	}
	b, err := PresetYAML(preset)
	if err != nil {
		return nil, "", err
	}
	f, err := Parse(b)
	if err != nil {
		return nil, "", fmt.Errorf("preset %s: %w", preset, err)
	}
	return f, strings.ToUpper(preset), nil
}

// Prepare loads and validates a lab without building anything. An empty
// name takes the lab file's metadata.name when it is not a preset, else
// DefaultName.
func Prepare(name string, src Source) (*Plan, []byte, error) {
	f, preset, err := src.load()
	if err != nil {
		return nil, nil, err
	}
	if name == "" {
		name = DefaultName
		if preset == "" && f.Metadata.Name != "" {
			name = f.Metadata.Name
		}
	}
	p, err := NewPlan(name, preset, f)
	if err != nil {
		return nil, nil, err
	}
	raw := src.File
	if len(raw) == 0 {
		raw, _ = PresetYAML(preset)
	}
	return p, raw, nil
}

// Up builds a lab from a validated plan. If anything fails, everything
// already built is removed again: a lab is either up or not there.
func Up(ctx context.Context, p *Plan, labFile []byte) (*State, error) {
	if err := os.MkdirAll(RunDir, 0o755); err != nil {
		return nil, fmt.Errorf("lab up %s: %w", p.Name, err)
	}
	if err := os.Mkdir(Dir(p.Name), 0o755); err != nil {
		if errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("lab %q already exists (kdive lab down %s removes it)", p.Name, p.Name)
		}
		return nil, fmt.Errorf("lab up %s: %w", p.Name, err)
	}
	left, err := kernel.ListNetNS(NetNSPrefix(p.Name))
	if err == nil && len(left) > 0 {
		_ = os.Remove(Dir(p.Name))
		return nil, fmt.Errorf("lab %q: namespaces of an earlier lab of that name are still there (%s); kdive lab down %s removes them",
			p.Name, strings.Join(left, ", "), p.Name)
	}
	s := &State{Plan: p, Created: time.Now().UTC().Truncate(time.Second), LabFile: string(labFile)}
	if err := buildUnderlay(ctx, p); err != nil {
		if derr := teardown(p.Name); derr != nil {
			err = errors.Join(err, fmt.Errorf("cleaning up: %w", derr))
		}
		return nil, fmt.Errorf("lab up %s: %w", p.Name, err)
	}
	if err := s.save(); err != nil {
		_ = teardown(p.Name)
		return nil, err
	}
	return s, nil
}

// Down removes the named lab: its processes, namespaces (and with them
// every link in them) and state directory. Removing a lab that is only
// partly there (an interrupted up) cleans up what is left.
func Down(name string) error {
	_, statErr := os.Stat(Dir(name))
	left, err := kernel.ListNetNS(NetNSPrefix(name))
	if err != nil {
		return err
	}
	if errors.Is(statErr, os.ErrNotExist) && len(left) == 0 {
		return fmt.Errorf("lab %q: %w", name, ErrNoLab)
	}
	return teardown(name)
}

// DownAll removes every lab, including the leftovers of interrupted ones.
func DownAll() error {
	names, err := Names()
	if err != nil {
		return err
	}
	nss, err := kernel.ListNetNS(nsPrefix)
	if err != nil {
		return err
	}
	for _, n := range nss {
		// kdive-LAB.ROLE: lab names have no dots, so this is the lab.
		if lab, _, ok := strings.Cut(strings.TrimPrefix(n, nsPrefix), "."); ok && !slices.Contains(names, lab) {
			names = append(names, lab)
		}
	}
	var errs []error
	for _, n := range names {
		if err := teardown(n); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func teardown(name string) error {
	nss, err := kernel.ListNetNS(NetNSPrefix(name))
	if err != nil {
		return err
	}
	var errs []error
	for _, n := range nss {
		if err := kernel.KillNetNSProcesses(kernel.NetNSDir+"/"+n, 3*time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	for _, n := range nss {
		if err := kernel.DeleteNetNS(n); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.RemoveAll(Dir(name)); err != nil {
		errs = append(errs, fmt.Errorf("remove lab state: %w", err))
	}
	if len(errs) > 0 {
		return fmt.Errorf("lab down %s: %w", name, errors.Join(errs...))
	}
	return nil
}

// ExecTarget resolves a node, pod ("namespace/name" or a unique bare name),
// "router" or "external" of a lab to its network namespace file.
func ExecTarget(s *State, target string) (string, error) {
	p := s.Plan
	switch target {
	case RouterName:
		return kernel.NetNSDir + "/" + p.Router.NetNS, nil
	case ExternalName:
		return kernel.NetNSDir + "/" + p.External.NetNS, nil
	}
	if n, ok := p.Node(target); ok {
		return kernel.NetNSDir + "/" + n.NetNS, nil
	}
	var matches []string
	for i := range p.Objects.Pods {
		pod := &p.Objects.Pods[i]
		if podKey(pod) == target || pod.Name == target {
			matches = append(matches, podKey(pod))
		}
	}
	switch len(matches) {
	case 0:
		var nodes []string
		for _, n := range p.Nodes {
			nodes = append(nodes, n.Name)
		}
		return "", fmt.Errorf("lab %s has no node or pod %q (nodes: %s; also router, external)", p.Name, target, strings.Join(nodes, ", "))
	case 1:
		return "", fmt.Errorf("pod %s of lab %s has no network namespace yet: this kdive attaches no pods yet (the pod network is the next capability)", matches[0], p.Name)
	default:
		return "", fmt.Errorf("pod name %q is ambiguous in lab %s: %s", target, p.Name, strings.Join(matches, ", "))
	}
}
