package cni

import (
	"errors"
	"fmt"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/kdive/kdive/internal/cni/ipam"
	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/model"
)

func (p *plugin) cmdDel(args *skel.CmdArgs) error {
	if err := p.del(args); err != nil {
		return cniError(opName("DEL", args), err)
	}
	return nil
}

// del detaches the pod. It is idempotent and best effort: a missing netns,
// veth or address is success, and the address is released even when the
// netns is gone (the runtime may call DEL after the pod's netns died). The
// host-side veths removed are the one named after the attachment and any
// host-side veth the prevResult lists (in case the naming changed since
// ADD); deleting either end of a veth removes both, and the /32 route with
// the host end. The pod's hostPorts go before its address: when they cannot
// be deleted the address stays allocated (no new pod may inherit traffic
// meant for this one) and DEL fails, for the runtime to retry.
func (p *plugin) del(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	a, err := attachmentOf(args)
	if err != nil {
		return err
	}
	prev, err := prevResult(conf, false)
	if err != nil {
		return err
	}
	host, err := p.openHost()
	if err != nil {
		return err
	}
	defer host.Close()

	var errs []error
	if args.Netns != "" {
		// A netns that is gone, or is not a pod's, has nothing of ours.
		if pod, err := openPodNS(args.Netns, host); err == nil {
			if _, err := pod.DeleteVeth(a.IfName); err != nil && !errors.Is(err, kernel.ErrNotVeth) {
				errs = append(errs, err)
			}
			pod.Close()
		}
	}
	for _, name := range hostVeths(conf, prev, hostVethName(conf, a)) {
		if err := deleteOwnVeth(host, name, a); err != nil {
			errs = append(errs, err)
		}
	}
	if conf.Mode == model.InterfaceBridge && len(errs) == 0 {
		// After the veth is gone: the port is never unguarded while it
		// exists. Only our own name: ADD guards no other, and a name
		// from prevResult could be another pod's port.
		if err := antiSpoof(host).Forget(hostVethName(conf, a)); err != nil {
			errs = append(errs, err)
		}
	}
	store, err := storeOf(conf)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	held, _, _ := store.Lookup(a) // unreadable: the state file alone says what to delete
	ctx, cancel := hostPortContext()
	defer cancel()
	if err := newHostPorts(host, conf.DataDir).remove(ctx, a, held); err != nil {
		return errors.Join(append(errs, err)...)
	}
	if _, err := store.Release(a); err != nil {
		errs = append(errs, ipamError(err))
	}
	return errors.Join(errs...)
}

// deleteOwnVeth deletes the host-side veth name if it is a's: a veth whose
// alias names a. Anything else of that name (a node's uplink named in a
// forged prevResult, say) is left alone.
func deleteOwnVeth(host *kernel.NetNS, name string, a ipam.Attachment) error {
	l, err := host.LinkInfo(name)
	if errors.Is(err, kernel.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if l.Type != "veth" || l.Alias != vethAlias(a) {
		return nil
	}
	if _, err := host.DeleteVeth(name); err != nil && !errors.Is(err, kernel.ErrNotVeth) {
		return err
	}
	return nil
}

// hostVeths lists the host-side veth names of an attachment: own first,
// then the prevResult's host-side interfaces except the bridge.
func hostVeths(conf *NetConf, prev *types100.Result, own string) []string {
	names := []string{own}
	if prev == nil {
		return names
	}
	for _, i := range prev.Interfaces {
		if i == nil || i.Sandbox != "" || i.Name == "" || i.Name == conf.Bridge || i.Name == own {
			continue
		}
		if checkIfName(i.Name) == nil {
			names = append(names, i.Name)
		}
	}
	return names
}

// prevResult parses the prevResult the runtime passed (CHECK must have one;
// DEL may), converted to the current result type.
func prevResult(conf *NetConf, required bool) (*types100.Result, error) {
	if conf.RawPrevResult == nil {
		if required {
			return nil, coded(types.ErrInvalidNetworkConfig, errors.New("prevResult: required (the result of ADD)"))
		}
		return nil, nil
	}
	if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
		return nil, coded(types.ErrDecodingFailure, fmt.Errorf("prevResult: %w", err))
	}
	res, err := types100.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return nil, coded(types.ErrDecodingFailure, fmt.Errorf("prevResult: %w", err))
	}
	return res, nil
}
