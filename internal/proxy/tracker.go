package proxy

import (
	"fmt"
	"reflect"
	"slices"
	"sync"

	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"

	"github.com/kdive/kdive/internal/model"
)

// Tracker turns Services and EndpointSlices into Desired snapshots. Event
// handlers mark services dirty; Desired recomputes only those, compares
// them with what it computed before, and reports the ports that differ as
// Changed: it is the one change detector, the backends touch only what it
// names. A new node or new settings make everything changed (Changed nil).
type Tracker struct {
	services corelisters.ServiceLister
	slices   discoverylisters.EndpointSliceLister

	mu    sync.Mutex
	dirty map[string]bool                // "ns/name" of services to recompute
	ports map[string][]model.ServicePort // per service, as last computed
	errs  map[string]error               // per service, why it is not served
	node  model.Node                     // node the cache was resolved for
	cfg   Config                         // settings of the previous snapshot
	cache map[string][]*Port             // per service, resolved for node
}

// NewTracker returns a tracker reading from the informers' listers. It
// does no work until Desired.
func NewTracker(services corelisters.ServiceLister, slices discoverylisters.EndpointSliceLister) *Tracker {
	return &Tracker{
		services: services, slices: slices,
		dirty: map[string]bool{}, ports: map[string][]model.ServicePort{},
		errs: map[string]error{}, cache: map[string][]*Port{},
	}
}

// ServiceChanged marks a service to recompute.
func (t *Tracker) ServiceChanged(namespace, name string) {
	t.mu.Lock()
	t.dirty[namespace+"/"+name] = true
	t.mu.Unlock()
}

// SliceChanged marks the service of an EndpointSlice to recompute.
func (t *Tracker) SliceChanged(s *discoveryv1.EndpointSlice) {
	if svc := s.Labels[discoveryv1.LabelServiceName]; svc != "" {
		t.ServiceChanged(s.Namespace, svc)
	}
}

// MarkAll makes the next Desired recompute every service (after the
// caches sync, or to repair drift).
func (t *Tracker) MarkAll() error {
	all, err := t.services.List(labels.Everything())
	if err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, s := range all {
		t.dirty[s.Namespace+"/"+s.Name] = true
	}
	for k := range t.ports {
		t.dirty[k] = true
	}
	return nil
}

// Desired computes the snapshot for node. Changed names the ports of the
// services that changed since the previous call, or is nil when the node
// or cfg did (every port resolves anew). With resync, the snapshot asks
// the backend to repair the kernel's copy (Desired.Resync). Invalid
// services are left out and reported, each error naming the object and
// the field; everything else is served.
func (t *Tracker) Desired(node model.Node, cfg Config, resync bool) (*Desired, []error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	changed := map[model.ServicePortName]bool{}
	if !sameNode(node, t.node) || !reflect.DeepEqual(cfg, t.cfg) {
		t.node, t.cfg, t.cache, changed = node, cfg, map[string][]*Port{}, nil
	}
	mark := func(ports []model.ServicePort) {
		for _, p := range ports {
			if changed != nil { // nil: everything changed already
				changed[p.Name] = true
			}
		}
	}
	for key := range t.dirty {
		old := t.ports[key]
		ports, err := t.compute(key)
		delete(t.errs, key)
		if err != nil {
			t.errs[key] = err
		}
		if reflect.DeepEqual(ports, old) {
			continue
		}
		mark(old)
		if len(ports) == 0 {
			delete(t.ports, key)
			delete(t.cache, key)
		} else {
			t.ports[key] = ports
			t.cache[key] = nil
		}
		mark(ports)
	}
	t.dirty = map[string]bool{}
	d := NewDesired(cfg, node)
	d.Changed, d.Resync = changed, resync
	for key, ports := range t.ports {
		resolved := t.cache[key]
		if resolved == nil {
			for _, sp := range ports {
				resolved = append(resolved, Resolve(sp, node))
			}
			t.cache[key] = resolved
		}
		d.Services = append(d.Services, resolved...)
	}
	slices.SortFunc(d.Services, func(a, b *Port) int { return a.Name.Compare(b.Name) })
	var errs []error
	for _, err := range t.errs {
		errs = append(errs, err)
	}
	return d, errs
}

func (t *Tracker) compute(key string) ([]model.ServicePort, error) {
	ns, name := splitKey(key)
	svc, err := t.services.Services(ns).Get(name)
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("service %s: %w", key, err)
	}
	sel := labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: name})
	sl, err := t.slices.EndpointSlices(ns).List(sel)
	if err != nil {
		return nil, fmt.Errorf("endpoint slices of %s: %w", key, err)
	}
	return ServicePorts(svc, sl)
}

func splitKey(key string) (string, string) {
	for i := range key {
		if key[i] == '/' {
			return key[:i], key[i+1:]
		}
	}
	return "", key
}

func sameNode(a, b model.Node) bool {
	return a.Name == b.Name && a.Zone == b.Zone && slices.Equal(a.IPs, b.IPs)
}
