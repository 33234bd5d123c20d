package nft

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// generation reads the namespace's nftables generation over c.
func generation(c *netlink.Conn) (uint32, error) {
	msgs, err := c.Execute(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETGEN), Flags: netlink.Request},
		// struct nfgenmsg: family, version, resource id.
		Data: []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0},
	})
	if err != nil {
		return 0, err
	}
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return 0, err
		}
		ad.ByteOrder = binary.BigEndian
		for ad.Next() {
			if ad.Type() == unix.NFTA_GEN_ID {
				return ad.Uint32(), nil
			}
		}
	}
	return 0, errors.New("no generation in the kernel's reply")
}

// Generation returns the namespace's nftables generation. The kernel
// counts every committed nftables transaction, of any table and any tool
// (nft, iptables-nft), so while it stays the same nobody changed any
// nftables table; one Run adds one. Reading it costs one netlink round
// trip on a socket the Conn keeps: closing a NETLINK_NETFILTER socket
// after a transaction that deleted something waits for an RCU grace
// period (milliseconds), which a socket per read would pay each time.
func (c *Conn) Generation() (uint32, error) {
	c.genMu.Lock()
	defer c.genMu.Unlock()
	if c.gen == nil {
		nc, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: c.ns.NetlinkNS()})
		if err != nil {
			return 0, fmt.Errorf("nftables generation in %s: %w", c.ns, err)
		}
		c.gen = nc
	}
	g, err := generation(c.gen)
	if err != nil {
		c.gen.Close() // a broken socket: the next read dials again
		c.gen = nil
		return 0, fmt.Errorf("nftables generation in %s: %w", c.ns, err)
	}
	return g, nil
}
