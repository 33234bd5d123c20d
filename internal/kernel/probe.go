package kernel

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"sync"

	"github.com/moby/ipvs"
	"github.com/vishvananda/netlink"
)

// Feature is a kernel capability some part of kdive needs.
type Feature string

const (
	FeatureVeth     Feature = "veth"
	FeatureBridge   Feature = "bridge"
	FeatureDummy    Feature = "dummy"
	FeatureIPIP     Feature = "ipip"
	FeatureVXLAN    Feature = "vxlan"
	FeatureIPVS     Feature = "ip_vs"
	FeatureNFTables Feature = "nf_tables"
)

var (
	probeMu    sync.Mutex
	probeCache = map[Feature]error{}
)

// Probe reports whether the kernel supports f by trying it in a throwaway
// network namespace; nil means supported. Results are cached per process.
func Probe(f Feature) error {
	probeMu.Lock()
	defer probeMu.Unlock()
	if err, ok := probeCache[f]; ok {
		return err
	}
	err := probe(f)
	probeCache[f] = err
	return err
}

func probe(f Feature) error {
	var b [4]byte
	_, _ = rand.Read(b[:])
	name := "kdive-probe-" + hex.EncodeToString(b[:])
	n, err := CreateNetNS(name)
	if err != nil {
		return fmt.Errorf("probe %s: %w", f, err)
	}
	defer func() {
		n.Close()
		_ = DeleteNetNS(name)
	}()
	la := netlink.NewLinkAttrs()
	la.Name = "probe0"
	var link netlink.Link
	switch f {
	case FeatureVeth:
		link = &netlink.Veth{LinkAttrs: la, PeerName: "probe1"}
	case FeatureBridge:
		link = &netlink.Bridge{LinkAttrs: la}
	case FeatureDummy:
		link = &netlink.Dummy{LinkAttrs: la}
	case FeatureIPIP:
		link = &netlink.Iptun{LinkAttrs: la, Local: net.IPv4(192, 0, 2, 1), Remote: net.IPv4(192, 0, 2, 2)}
	case FeatureVXLAN:
		link = &netlink.Vxlan{LinkAttrs: la, VxlanId: 1, Port: 4789}
	case FeatureIPVS:
		// moby/ipvs only logs a failed family lookup, so ask for the
		// generic netlink family first (this also autoloads ip_vs).
		if _, err := netlink.GenlFamilyGet("IPVS"); err != nil {
			return fmt.Errorf("kernel has no %s (no IPVS generic netlink family): %w", f, err)
		}
		h, err := ipvs.New(n.Path())
		if err != nil {
			return fmt.Errorf("kernel has no %s (IPVS netlink family unavailable): %w", f, err)
		}
		defer h.Close()
		if _, err := h.GetServices(); err != nil {
			return fmt.Errorf("kernel has no %s: %w", f, err)
		}
		return nil
	case FeatureNFTables:
		if err := n.Nft(context.Background(), "add table inet kdive_probe\n"); err != nil {
			return fmt.Errorf("kernel or tools have no %s: %w", f, err)
		}
		return nil
	default:
		return fmt.Errorf("probe: unknown feature %q", f)
	}
	if err := n.nl.LinkAdd(link); err != nil {
		return fmt.Errorf("kernel has no %s device: %w", f, err)
	}
	return nil
}
