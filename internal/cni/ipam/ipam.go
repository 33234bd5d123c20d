package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// Attachment names one pod interface the way CNI does: the runtime's
// container (sandbox) ID and the interface name inside the pod.
type Attachment struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifname"`
}

func (a Attachment) String() string { return a.ContainerID + "/" + a.IfName }

// Validate rejects attachments the store cannot record faithfully.
func (a Attachment) Validate() error {
	switch {
	case a.ContainerID == "":
		return errors.New("empty container ID")
	case a.IfName == "":
		return fmt.Errorf("container %s: empty interface name", a.ContainerID)
	case strings.ContainsAny(a.ContainerID, "\n\r\x00"):
		return fmt.Errorf("container ID %q contains a control character", a.ContainerID)
	case strings.ContainsAny(a.IfName, "\n\r\x00"):
		return fmt.Errorf("interface name %q contains a control character", a.IfName)
	}
	return nil
}

// Allocation is one address in the store and who holds it. An entry whose
// file could not be read back has a zero Attachment: it is never handed out
// again, and GC frees it.
type Allocation struct {
	Addr       netip.Addr `json:"addr"`
	Attachment Attachment `json:"attachment"`
}

// ErrFull is wrapped (errors.Is) by Allocate's error when the block has no
// free address.
var ErrFull = errors.New("pod block is full")

type fullError struct {
	block netip.Prefix
	inUse int
}

func (e *fullError) Error() string {
	return fmt.Sprintf("pod block %s is full (%d addresses in use)", e.block, e.inUse)
}

func (e *fullError) Is(target error) bool { return target == ErrFull }

// CheckBlock tells whether block can be a pod block: IPv4, in canonical
// form (no host bits set), between a /16 and a /30.
func CheckBlock(block netip.Prefix) error {
	switch {
	case !block.IsValid():
		return errors.New("invalid pod block")
	case !block.Addr().Is4():
		return fmt.Errorf("pod block %s: only IPv4 blocks are supported", block)
	case block.Masked() != block:
		return fmt.Errorf("pod block %s has host bits set (did you mean %s?)", block, block.Masked())
	case block.Bits() > 30:
		return fmt.Errorf("pod block %s is too small: the smallest is a /30", block)
	case block.Bits() < 16:
		return fmt.Errorf("pod block %s is too large for one node: the largest is a /16", block)
	}
	return nil
}

// Gateway is the block's first host address, reserved for the gateway
// (kube-bridge's address in bridge mode).
func Gateway(block netip.Prefix) netip.Addr { return block.Addr().Next() }

// Broadcast is the block's last address.
func Broadcast(block netip.Prefix) netip.Addr {
	a := block.Addr().As4()
	host := uint32(1)<<(32-block.Bits()) - 1
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v |= host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// Capacity is how many pods a block holds: all its addresses minus the
// network, gateway and broadcast addresses.
func Capacity(block netip.Prefix) int { return 1<<(32-block.Bits()) - 3 }

// first and last are the range pods are given addresses from.
func first(block netip.Prefix) netip.Addr { return Gateway(block).Next() }
func last(block netip.Prefix) netip.Addr  { return Broadcast(block).Prev() }

// usable reports whether a may be handed to a pod.
func usable(block netip.Prefix, a netip.Addr) bool {
	return block.Contains(a) && a.Compare(first(block)) >= 0 && a.Compare(last(block)) <= 0
}
