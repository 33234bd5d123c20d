package cni

import (
	"errors"
	"fmt"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/kdive/kdive/internal/cni/ipam"
	"github.com/kdive/kdive/internal/kernel"
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
// a freed IPAM entry). Deleting a host-side veth removes its pod end and /32
// route too. Nothing that is not ours is touched.
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
	freed, err := store.GC(keep)
	if err != nil {
		return ipamError(err)
	}
	host, err := p.openHost()
	if err != nil {
		return err
	}
	defer host.Close()

	stale := map[string]ipam.Attachment{}
	for _, f := range freed {
		if f.Attachment != (ipam.Attachment{}) {
			stale[hostVethName(conf, f.Attachment)] = f.Attachment
		}
	}
	links, err := host.Links()
	if err != nil {
		return err
	}
	var errs []error
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
	return errors.Join(errs...)
}
