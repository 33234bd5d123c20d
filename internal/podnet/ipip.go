package podnet

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/model"
)

// TunnelName is the per-peer IPIP device of bridge mode for a peer IP:
// "tun-" and the first 10 hex digits of the SHA-256 of the IP's bytes, 14
// characters, within IFNAMSIZ for any address family.
func TunnelName(peer netip.Addr) string {
	sum := sha256.Sum256(peer.AsSlice())
	return "tun-" + hex.EncodeToString(sum[:])[:10]
}

// ipipFallbackDevice configures tunl0 for routed mode (Calico style).
func (r *renderer) ipipFallbackDevice() {
	r.addLink(kernel.Tunnel{Name: kernel.IPIPFallback, Kind: kernel.TunnelIPIP}, r.p.Node,
		fmt.Sprintf("IPIP fallback device: sends to each route's gateway and receives from any peer; %s is this node's source toward remote pods",
			r.vtep.Addr()))
}

// ipipFallbackPeer routes a peer's block through tunl0; the gateway is the
// outer destination.
func (r *renderer) ipipFallbackPeer(peer model.Node) {
	r.addRoute(kernel.Route{Dst: peer.PodCIDR, Gateway: peer.IP(), Dev: kernel.IPIPFallback, OnLink: true}, peer.Name,
		fmt.Sprintf("pod block %s of %s via %s (IPIP, %s)", peer.PodCIDR, peer.Name, kernel.IPIPFallback, r.policy()))
}

// ipipTunnelPeer gives a peer its own point-to-point IPIP device
// (kube-router style) and routes its block through it.
func (r *renderer) ipipTunnelPeer(peer model.Node) {
	name := TunnelName(peer.IP())
	r.addLink(kernel.Tunnel{Name: name, Kind: kernel.TunnelIPIP, Local: r.p.NodeIP, Remote: peer.IP()}, peer.Name,
		fmt.Sprintf("IPIP tunnel to %s (%s); %s is this node's source toward its pods", peer.Name, peer.IP(), r.vtep.Addr()))
	r.addRoute(kernel.Route{Dst: peer.PodCIDR, Gateway: peer.IP(), Dev: name, OnLink: true}, peer.Name,
		fmt.Sprintf("pod block %s of %s via %s (IPIP tunnel to %s, %s)", peer.PodCIDR, peer.Name, name, peer.IP(), r.policy()))
}
