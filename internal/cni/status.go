package cni

import (
	"fmt"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/kdive/kdive/internal/cni/ipam"
	"github.com/kdive/kdive/internal/model"
)

func (p *plugin) cmdStatus(args *skel.CmdArgs) error {
	if err := p.status(args); err != nil {
		return cniError("STATUS", err)
	}
	return nil
}

// status tells the runtime whether ADD can work: the IPAM store writable
// and the block not full, and in routed mode a node route covering the
// pods' gateway. Any failure is ErrPluginNotAvailable (50).
func (p *plugin) status(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	store, err := storeOf(conf)
	if err != nil {
		return err
	}
	if err := store.CheckWritable(); err != nil {
		return coded(types.ErrPluginNotAvailable, err)
	}
	inUse, err := store.InUse()
	if err != nil {
		return coded(types.ErrPluginNotAvailable, err)
	}
	if inUse >= ipam.Capacity(conf.Block) {
		return coded(types.ErrPluginNotAvailable, fmt.Errorf("pod block %s is full (%d addresses in use)", conf.Block, inUse))
	}
	if conf.Mode != model.InterfaceRouted {
		return nil
	}
	host, err := p.openHost()
	if err != nil {
		return coded(types.ErrPluginNotAvailable, err)
	}
	defer host.Close()
	return checkGatewayRoute(host)
}
