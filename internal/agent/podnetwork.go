package agent

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"time"

	"k8s.io/apimachinery/pkg/labels"

	"github.com/kdive/kdive/internal/cni"
	"github.com/kdive/kdive/internal/cni/ipam"
	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/podnet"
	"github.com/kdive/kdive/internal/source"
)

// podnetRunner is the agent's pod network, a reconciler marked by Node
// events only: this node's CNI network config, the IPAM report, and
// internal/podnet's routes, tunnels and entries toward the peers.
type podnetRunner struct {
	a      *Agent
	podnet *podnet.Reconciler
	// desired is the state podnet last synced; a change applied while
	// syncing the same state again repairs drift.
	desired       podnet.State
	repairing     bool
	orphansLogged int
	uplink        string
	confList      []byte
}

func (r *podnetRunner) name() string { return "podnet" }

// sync computes this node's pod network from the node cache and applies
// it (always all of it: podnet compares with the kernel itself).
func (r *podnetRunner) sync(ctx context.Context, _ bool) error {
	st, err := r.desiredState()
	if err != nil {
		return err
	}
	return r.syncPodNet(ctx, st)
}

// syncPodNet writes the CNI network config, then routes and tunnels.
func (r *podnetRunner) syncPodNet(ctx context.Context, st podnet.State) error {
	a := r.a
	up, err := r.findUplink(st.Local.IP())
	if err != nil {
		return err
	}
	st.Subnet = up.subnet
	if err := r.writeConfList(st.Local, up); err != nil {
		return err
	}
	if r.podnet == nil || r.uplink != up.name {
		r.podnet = podnet.New(podnet.Options{NetNS: a.opts.NetNS, Network: a.cfg.PodNetwork, NATOutgoing: a.cfg.NATOutgoing, Uplink: up.name, OnChange: r.changed})
		r.uplink = up.name
	}
	r.reportIPAM(st.Local)
	r.repairing = reflect.DeepEqual(st, r.desired)
	if err := r.podnet.Sync(ctx, st); err != nil {
		a.metrics.syncErrors.WithLabelValues("podnet").Inc()
		return fmt.Errorf("sync pod network of node %s: %w", st.Local.Name, err)
	}
	r.desired = st
	return nil
}

// desiredState reads this node and its peers from the node cache. When
// this node cannot carry the pod network yet (no Node, no InternalIP, no
// spec.podCIDR), the error wraps ErrNotReady.
func (r *podnetRunner) desiredState() (podnet.State, error) {
	a := r.a
	var st podnet.State
	all, err := a.nodes.List(labels.Everything())
	if err != nil {
		return st, err
	}
	found := false
	for _, n := range all {
		mn, problem := source.Node(n)
		if n.Name == a.cfg.NodeName {
			if problem != "" {
				return st, fmt.Errorf("node %s: %s: %w", n.Name, problem, ErrNotReady)
			}
			st.Local, found = mn, true
			continue
		}
		if problem != "" {
			a.log.Info("skipping peer", "node", n.Name, "reason", problem)
			continue
		}
		st.Peers = append(st.Peers, mn)
	}
	if !found {
		return st, fmt.Errorf("node %s: no Node object of that name: %w", a.cfg.NodeName, ErrNotReady)
	}
	// The lister's order is random; a stable one makes equal states equal.
	sort.Slice(st.Peers, func(i, j int) bool { return st.Peers[i].Name < st.Peers[j].Name })
	return st, nil
}

type uplink struct {
	name   string
	subnet netip.Prefix
	mtu    int
}

// findUplink finds the interface holding the node's IP (or the configured
// one) and its subnet.
func (r *podnetRunner) findUplink(ip netip.Addr) (uplink, error) {
	a := r.a
	links, err := a.opts.NetNS.Links()
	if err != nil {
		return uplink{}, err
	}
	for _, l := range links {
		if a.cfg.Uplink != "" && l.Name != a.cfg.Uplink {
			continue
		}
		for _, p := range l.Addrs {
			if p.Addr() == ip {
				return uplink{name: l.Name, subnet: p.Masked(), mtu: l.MTU}, nil
			}
		}
	}
	if a.cfg.Uplink != "" {
		return uplink{}, fmt.Errorf("uplink %s does not hold the node's InternalIP %s", a.cfg.Uplink, ip)
	}
	return uplink{}, fmt.Errorf("no interface holds the node's InternalIP %s", ip)
}

// writeConfList writes the node's CNI network config when it changed.
func (r *podnetRunner) writeConfList(local model.Node, up uplink) error {
	a := r.a
	mtu := a.cfg.MTU
	if mtu == 0 {
		mtu = a.cfg.PodNetwork.PodMTU(up.mtu)
	}
	b, err := cni.NewConfList(cni.ConfListOptions{
		Mode:    a.cfg.PodNetwork.Interface,
		PodCIDR: local.PodCIDR,
		MTU:     mtu,
		DataDir: a.cfg.CNI.DataDir,
	})
	if err != nil {
		return err
	}
	if bytes.Equal(b, r.confList) {
		if _, err := os.Stat(filepath.Join(a.cfg.CNI.ConfDir, cni.ConfListFile)); err == nil {
			return nil
		}
	}
	if err := cni.WriteConfList(a.cfg.CNI.ConfDir, b); err != nil {
		return err
	}
	r.confList = b
	a.log.Info("wrote CNI network config", "dir", a.cfg.CNI.ConfDir, "podCIDR", local.PodCIDR, "mtu", mtu)
	return nil
}

// changed counts changes podnet makes while the desired state is the one
// already programmed: someone else changed or removed our routes, tunnels
// or entries, and the sync repaired them.
func (r *podnetRunner) changed(c podnet.Change) {
	a := r.a
	a.log.Debug("pod network change", "change", fmt.Sprint(c))
	if r.repairing {
		a.metrics.driftRepairs.WithLabelValues("podnet").Inc()
		a.log.Info("repaired pod network drift", "change", fmt.Sprint(c))
	}
}

// reportIPAM publishes how full this node's block is.
func (r *podnetRunner) reportIPAM(local model.Node) {
	a := r.a
	store, err := ipam.New(a.cfg.CNI.DataDir, local.PodCIDR)
	if err != nil {
		return
	}
	allocs, err := store.List()
	if err != nil {
		return
	}
	block := local.PodCIDR.String()
	a.metrics.ipamInUse.WithLabelValues(local.Name, block).Set(float64(len(allocs)))
	a.metrics.ipamSize.WithLabelValues(local.Name, block).Set(float64(ipam.Capacity(local.PodCIDR)))
	if a.pods == nil {
		return
	}
	orphans, err := a.pods.orphans(allocs, time.Now())
	if err != nil {
		return
	}
	a.metrics.ipamOrphaned.WithLabelValues(local.Name, block).Set(float64(len(orphans)))
	if len(orphans) != r.orphansLogged {
		r.orphansLogged = len(orphans)
		for _, o := range orphans {
			a.log.Warn("pod address allocated but held by no pod of this node", "addr", o.Addr, "attachment", o.Attachment.String(), "for", ">"+orphanGrace.String())
		}
	}
}
