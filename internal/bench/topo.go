package bench

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/podnet"
)

// NSPrefix starts the name of every namespace a bench run creates:
// "kdive-bench-<8 hex digits of the run>-<role>".
const NSPrefix = "kdive-bench-"

// nsSet is the throwaway namespaces of one topology. Close deletes all of
// them, whatever happened before; nothing in them has a link to a
// namespace outside the set, so no packet of the run can leave it.
type nsSet struct {
	prefix   string
	made     []*kernel.NetNS
	closers  []func() error
	onCreate func(name string)
}

func newNSSet(onCreate func(string)) *nsSet {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return &nsSet{prefix: NSPrefix + hex.EncodeToString(b[:]), onCreate: onCreate}
}

// create makes the namespace "<prefix>-<role>".
func (s *nsSet) create(role string) (*kernel.NetNS, error) {
	name := s.prefix + "-" + role
	ns, err := kernel.CreateNetNS(name)
	if err != nil {
		return nil, err
	}
	s.made = append(s.made, ns)
	if s.onCreate != nil {
		s.onCreate(name)
	}
	return ns, nil
}

// onClose registers fn (a server, a proxy's nft session) to be stopped
// before the namespaces are deleted.
func (s *nsSet) onClose(fn func() error) { s.closers = append(s.closers, fn) }

// Close stops what runs in the namespaces and deletes them.
func (s *nsSet) Close() error {
	var errs []error
	for i := len(s.closers) - 1; i >= 0; i-- {
		errs = append(errs, s.closers[i]())
	}
	s.closers = nil
	for _, ns := range s.made {
		name := ns.Name()
		ns.Close()
		if err := kernel.DeleteNetNS(name); err != nil {
			errs = append(errs, err)
		}
	}
	s.made = nil
	return errors.Join(errs...)
}

// attachRouted wires a pod to its node as kdive-cni does in routed mode
// (Calico style): the pod holds its address as a /32 with a link-scope
// route to 169.254.1.1 and its default route through it; the host end of
// the veth has no address but answers ARP for 169.254.1.1 by proxy ARP
// (podnet's "169.254.1.1/32 dev lo" gives the node the route proxy ARP
// needs); the node reaches the pod through "<pod>/32 dev <host veth>".
func attachRouted(node, pod *kernel.NetNS, hostVeth string, ip netip.Addr, mtu int) error {
	if err := node.AddVeth(hostVeth, kernel.LinkAttrs{MTU: mtu}, pod, "eth0", kernel.LinkAttrs{MTU: mtu}); err != nil {
		return err
	}
	for _, s := range [][2]string{
		{"net.ipv4.conf." + hostVeth + ".proxy_arp", "1"},
		{"net.ipv4.neigh." + hostVeth + ".proxy_delay", "0"},
		{"net.ipv4.conf." + hostVeth + ".forwarding", "1"},
	} {
		if err := node.Sysctl(s[0], s[1]); err != nil {
			return err
		}
	}
	if err := node.LinkUp(hostVeth); err != nil {
		return err
	}
	if err := pod.LinkUp("eth0"); err != nil {
		return err
	}
	if err := pod.AddAddr("eth0", netip.PrefixFrom(ip, 32)); err != nil {
		return err
	}
	for _, r := range []kernel.Route{
		{Dst: netip.PrefixFrom(podnet.RoutedGateway, 32), Dev: "eth0", Scope: unix.RT_SCOPE_LINK},
		{Gateway: podnet.RoutedGateway, Dev: "eth0"},
	} {
		if err := pod.ReplaceRoute(r); err != nil {
			return fmt.Errorf("pod %s: %w", pod, err)
		}
	}
	return node.ReplaceRoute(kernel.Route{Dst: netip.PrefixFrom(ip, 32), Dev: hostVeth,
		Scope: unix.RT_SCOPE_LINK, Protocol: kernel.RouteProtocolCNI})
}
