package cni

// Source guard of bridge-mode pods. On a bridge no reverse path check
// applies (pod to pod is switched; the node's route back to any address of
// the block is the bridge itself), so each pod's bridge port is guarded by
// the node's bridge table kdive-antispoof (nft.PortGuard): a frame from
// the port passes only as IPv4 or ARP from the pod's own MAC and address.
// A pod that adds another address, takes a neighbour's, or changes its MAC
// (to teach the bridge another pod's MAC) sends nothing. Routed-mode pods
// need no table: strict rp_filter on their host veth does the same
// (plugRouted).
//
// ADD allows the port after plugging it, before the pod runs; DEL deletes
// the veth first and then the port's elements (never an unguarded moment);
// GC forgets ports whose veth is gone or is not a live attachment's; CHECK
// requires the element; `kdive agent --cleanup` deletes the table.

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/nft"
)

// AntiSpoofTable is the bridge-family table guarding bridge-mode pods.
const AntiSpoofTable = "kdive-antispoof"

func antiSpoof(host *kernel.NetNS) *nft.PortGuard { return nft.NewPortGuard(host, AntiSpoofTable) }

// CleanupAntiSpoof deletes the guard table (for `kdive agent --cleanup`):
// bridge-mode pods are no longer kept to their own addresses.
func CleanupAntiSpoof(host *kernel.NetNS) error {
	return antiSpoof(host).Delete()
}

// guardPort lets the host veth's pod send as its own MAC and address only.
func (at *attach) guardPort(pod kernel.Link) error {
	if err := antiSpoof(at.host).Allow(nft.PortSource{Port: at.hostVeth, MAC: pod.MAC, Addr: at.ip}); err != nil {
		return fmt.Errorf("guard the pod's bridge port against spoofing: %w", err)
	}
	return nil
}

// sweepGuard forgets guarded ports that are no veth of ours any more, or
// whose attachment the runtime no longer lists.
func sweepGuard(host *kernel.NetNS, live func(l kernel.Link) bool) error {
	g := antiSpoof(host)
	srcs, err := g.Sources()
	if err != nil {
		return err
	}
	ports, err := g.Ports()
	if err != nil {
		return err
	}
	for _, s := range srcs {
		if !slices.Contains(ports, s.Port) {
			ports = append(ports, s.Port)
		}
	}
	var stale []string
	for _, p := range ports {
		l, err := host.LinkInfo(p)
		if err != nil || !live(l) {
			stale = append(stale, p)
		}
	}
	if len(stale) == 0 {
		return nil
	}
	if err := g.Forget(stale...); err != nil {
		return fmt.Errorf("forget the guard of stale ports %v: %w", stale, err)
	}
	return nil
}

// guard checks the pod's port is guarded for its MAC and address.
func (c *checker) guard(ip netip.Addr, port string) {
	pl, err := c.pod.LinkInfo(c.a.IfName)
	if err != nil {
		return // podSide reports it
	}
	g := antiSpoof(c.host)
	srcs, err := g.Sources()
	if err != nil {
		c.missing("node: %v", err)
		return
	}
	ports, err := g.Ports()
	if err != nil {
		c.missing("node: %v", err)
		return
	}
	if !slices.Contains(ports, port) || !slices.ContainsFunc(srcs, func(s nft.PortSource) bool {
		return s.Port == port && s.Addr == ip && s.MAC.String() == pl.MAC.String()
	}) {
		c.missing("node: bridge port %s is not guarded for %s (%s) in table bridge %s", port, ip, pl.MAC, AntiSpoofTable)
	}
}
