package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/kdive/kdive/internal/kernel"
)

// Source says where a lab file comes from: a preset name or file contents.
type Source struct {
	Preset string // used when File is empty
	File   []byte
	// FileName is the file's name, for messages.
	FileName string
	// Kubernetes makes the lab a Kubernetes lab, as spec.kubernetes: {}
	// does (lab up --kubernetes).
	Kubernetes bool
	// Interface and ProxyMode, when set, replace the lab file's
	// spec.podNetwork.interface and spec.proxy.mode (lab up --interface,
	// --proxy-mode): a preset in another mode.
	Interface, ProxyMode string
}

// YAML is the lab file the source gives: the file or preset as written,
// or with the source's changes.
func (s Source) YAML() ([]byte, error) {
	if !s.overridden() && !s.Kubernetes {
		if len(s.File) > 0 {
			return s.File, nil
		}
		return PresetYAML(s.presetName())
	}
	f, _, err := s.load()
	if err != nil {
		return nil, err
	}
	return f.Marshal()
}

func (s Source) presetName() string {
	if s.Preset == "" {
		return DefaultPreset
	}
	return s.Preset
}

// overridden says whether the source changes its lab file.
func (s Source) overridden() bool { return s.Interface != "" || s.ProxyMode != "" }

// Load the lab file the source names.
func (s Source) load() (*File, string, error) {
	if len(s.File) > 0 {
		f, err := Parse(s.File)
		if err != nil {
			return nil, "", fmt.Errorf("%s: %w", s.FileName, err)
		}
		s.kubernetes(f)
		return f, "", nil
	}
	preset := s.presetName()
	b, err := PresetYAML(preset)
	if err != nil {
		return nil, "", err
	}
	f, err := Parse(b)
	if err != nil {
		return nil, "", fmt.Errorf("preset %s: %w", preset, err)
	}
	s.kubernetes(f)
	return f, strings.ToUpper(preset), nil
}

func (s Source) kubernetes(f *File) {
	if s.Kubernetes && f.Spec.Kubernetes == nil {
		f.Spec.Kubernetes = &Kubernetes{}
	}
	if s.Interface != "" {
		f.Spec.PodNetwork.Interface = s.Interface
	}
	if s.ProxyMode != "" {
		f.Spec.Proxy.Mode = s.ProxyMode
	}
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
	switch {
	case src.overridden():
		if raw, err = f.Marshal(); err != nil {
			return nil, nil, err
		}
	case len(raw) == 0:
		raw, _ = PresetYAML(preset)
	}
	return p, raw, nil
}

// UpOptions are what Up needs besides the plan.
type UpOptions struct {
	// LabFile is the lab file the plan came from, kept in the lab's state.
	LabFile []byte
	// Binaries the lab runs: agents, echo servers, the CNI plugin.
	Binaries Binaries
	// Timeout bounds each wait of up: the agents' first sync (default
	// 60s), and in a Kubernetes lab the API server's start and each
	// kubelet's registration (default 90s) and the cluster being ready
	// (default 3m); a longer Timeout raises them all, for a slow or
	// emulated CPU.
	Timeout time.Duration
	// Progress, when set, hears what a Kubernetes lab's up is doing.
	Progress io.Writer
}

// Up builds a lab from a validated plan: the underlay, the store with the
// lab's objects, an agent per node, and the pods, attached through CNI. If
// anything fails, everything already built is removed again: a lab is
// either up or not there.
func Up(ctx context.Context, p *Plan, opts UpOptions) (*State, error) {
	if err := p.checkFeatures(); err != nil {
		return nil, err
	}
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
	s := &State{Plan: p, Created: time.Now().UTC().Truncate(time.Second), LabFile: string(opts.LabFile),
		BinDir: filepath.Dir(opts.Binaries.Kdive)}
	build := up
	if p.Kubernetes != nil {
		build = upKubernetes
	}
	if err := s.save(); err != nil {
		_ = os.Remove(Dir(p.Name))
		return nil, err
	}
	if err := build(ctx, s, opts); err != nil {
		if derr := teardown(p.Name); derr != nil {
			err = errors.Join(err, fmt.Errorf("cleaning up: %w", derr))
		}
		return nil, fmt.Errorf("lab up %s: %w", p.Name, err)
	}
	return s, nil
}

// Features lists the kernel features a lab needs.
func (p *Plan) Features() []kernel.Feature {
	f := []kernel.Feature{kernel.FeatureVeth, kernel.FeatureBridge, kernel.FeatureNFTables}
	switch p.PodNetwork.Encap {
	case "ipip":
		f = append(f, kernel.FeatureIPIP)
	case "vxlan":
		f = append(f, kernel.FeatureVXLAN)
	}
	if p.Proxy.Mode == "ipvs" {
		f = append(f, kernel.FeatureIPVS, kernel.FeatureDummy)
	}
	return f
}

// checkFeatures fails before anything is built when the kernel lacks what
// the lab needs, saying how to run it anyway.
func (p *Plan) checkFeatures() error {
	for _, f := range p.Features() {
		if err := kernel.Probe(f); err != nil {
			return fmt.Errorf("lab %s needs %s, which this kernel lacks (%v); run it in the test VM: hack/vmrun kdive lab up ...", p.Name, f, err)
		}
	}
	return nil
}

func up(ctx context.Context, s *State, opts UpOptions) error {
	p := s.Plan
	agentTimeout := max(opts.Timeout, 60*time.Second)
	if err := buildUnderlay(ctx, p); err != nil {
		return err
	}
	if err := p.seedStore(ctx); err != nil {
		return err
	}
	if err := p.installCNI(opts.Binaries); err != nil {
		return err
	}
	if err := p.startAgents(ctx, opts.Binaries, agentTimeout); err != nil {
		return err
	}
	if err := p.startAPIServer(ctx, opts.Binaries); err != nil {
		return err
	}
	for i := range p.Objects.Pods {
		if err := p.attachPod(ctx, opts.Binaries, &p.Objects.Pods[i]); err != nil {
			return err
		}
	}
	return nil
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
	// A Kubernetes lab whose down was interrupted may have only its
	// cgroups left (pods' processes in them).
	cgs, _ := filepath.Glob(filepath.Join(cgroupFS, "pids", cgroupBase("*")))
	for _, c := range cgs {
		if lab := strings.TrimPrefix(filepath.Base(c), cgroupBase("")); !slices.Contains(names, lab) {
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
	// A Kubernetes lab's pods live in namespaces containerd made, in the
	// nodes' cgroups: their processes go with the cgroups.
	if err := removeCgroups(name); err != nil {
		errs = append(errs, err)
	}
	if err := releaseHost(name); err != nil {
		errs = append(errs, err)
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
	if k := p.Kubernetes; k != nil {
		if target == ControlPlaneName {
			return kernel.NetNSDir + "/" + k.ControlPlane.NetNS, nil
		}
		return p.kubePodNetNS(target)
	}
	var matches []*corev1.Pod
	pods := p.Objects.Pods
	if snap, err := Snapshot(context.Background(), s); err == nil {
		pods = snap.Pods
	}
	for i := range pods {
		pod := &pods[i]
		if podKey(pod) == target || pod.Name == target {
			matches = append(matches, pod)
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
		path, err := PodNetNSPath(s, matches[0])
		if err == nil {
			_, err = os.Stat(path)
		}
		if err != nil {
			return "", fmt.Errorf("pod %s of lab %s has no network namespace (not attached)", podKey(matches[0]), p.Name)
		}
		return path, nil
	default:
		var names []string
		for _, pod := range matches {
			names = append(names, podKey(pod))
		}
		return "", fmt.Errorf("pod name %q is ambiguous in lab %s: %s", target, p.Name, strings.Join(names, ", "))
	}
}
