package cni

import (
	"errors"
	"fmt"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/kdive/kdive/internal/cni/ipam"
	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/model"
)

func (p *plugin) cmdGC(args *skel.CmdArgs) error {
	if err := p.gc(args); err != nil {
		return cniError("GC", err)
	}
	return nil
}

// gc frees everything whose attachment the runtime does not list in
// cni.dev/valid-attachments: IPAM entries, and host-side veths of ours (a
// veth whose alias names its attachment, or, without an alias, named after
// a freed IPAM entry), the source guard of ports no longer live (bridge
// mode), and hostPorts (of attachments with a state file, and
// any leading to an address no longer allocated). Deleting a host-side veth
// removes its pod end and /32 route too. An attachment whose hostPorts
// cannot be deleted keeps its address until a later GC or DEL. Nothing that
// is not ours is touched.
func (p *plugin) gc(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	list := conf.ValidAttachments
	if list == nil {
		list = conf.LegacyAttachments
	}
	valid := make(map[ipam.Attachment]bool, len(list))
	var keep []ipam.Attachment
	for _, v := range list {
		a := ipam.Attachment{ContainerID: v.ContainerID, IfName: v.IfName}
		valid[a] = true
		keep = append(keep, a)
	}
	store, err := storeOf(conf)
	if err != nil {
		return err
	}
	host, err := p.openHost()
	if err != nil {
		return err
	}
	defer host.Close()

	var errs []error
	ctx, cancel := hostPortContext()
	defer cancel()
	hp := newHostPorts(host, conf.DataDir)
	allocs, err := store.List()
	if err != nil {
		return ipamError(err)
	}
	stuck, err := hp.gc(ctx, valid, allocs)
	if err != nil {
		errs = append(errs, err)
	}
	freed, err := store.GC(append(keep, stuck...))
	if err != nil {
		return errors.Join(append(errs, ipamError(err))...)
	}
	if err := hp.sweep(ctx, store.List); err != nil {
		errs = append(errs, err)
	}

	stale := map[string]ipam.Attachment{}
	for _, f := range freed {
		if f.Attachment != (ipam.Attachment{}) {
			stale[hostVethName(conf, f.Attachment)] = f.Attachment
		}
	}
	links, err := host.Links()
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	for _, l := range links {
		if l.Type != "veth" {
			continue
		}
		a, ours := aliasAttachment(l.Alias)
		if !ours && l.Alias == "" {
			a, ours = stale[l.Name]
		}
		if !ours || valid[a] {
			continue
		}
		if _, err := host.DeleteVeth(l.Name); err != nil && !errors.Is(err, kernel.ErrNotVeth) {
			errs = append(errs, fmt.Errorf("remove stale veth %s of %s: %w", l.Name, a, err))
		}
	}
	if conf.Mode == model.InterfaceBridge {
		live := func(l kernel.Link) bool {
			a, ours := aliasAttachment(l.Alias)
			return l.Type == "veth" && ours && valid[a]
		}
		if err := sweepGuard(host, live); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
