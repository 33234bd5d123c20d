package kernel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/moby/ipvs"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// IPVS service flags (include/uapi/linux/ip_vs.h, IP_VS_SVC_F_*), as
// VirtualServer.Flags carries them.
const (
	// IPVSFlagPersistent: persistent port (ipvsadm -p), session affinity.
	IPVSFlagPersistent uint32 = 0x0001
	// IPVSFlagHashed is the kernel's own bookkeeping; never set or reported.
	IPVSFlagHashed uint32 = 0x0002
	// IPVSFlagOnePacket: one-packet scheduling (UDP).
	IPVSFlagOnePacket uint32 = 0x0004
	// IPVSFlagSched1 is sh-fallback / mh-fallback for the sh and mh
	// schedulers: skip a real server that is unavailable (weight 0).
	IPVSFlagSched1 uint32 = 0x0008
	// IPVSFlagSched2 is sh-port / mh-port: hash the source port too.
	IPVSFlagSched2 uint32 = 0x0010
)

// ErrSchedulerUnavailable is wrapped when the kernel cannot load an IPVS
// scheduler: its module (ip_vs_<name>) is missing.
var ErrSchedulerUnavailable = errors.New("ipvs scheduler unavailable")

// ErrIPVSUnavailable is wrapped when the kernel has no IPVS at all.
var ErrIPVSUnavailable = errors.New("kernel has no IPVS (module ip_vs)")

// VirtualServer is an IPVS virtual server (ipvsadm's "service"): an
// address, protocol and port, or a firewall mark when FWMark is set.
// IPv4 only, as the rest of kdive.
type VirtualServer struct {
	Address netip.Addr
	// Protocol is "TCP", "UDP" or "SCTP" (Kubernetes' spelling).
	Protocol string
	Port     uint16
	// FWMark, when not zero, makes this a firewall-mark virtual server:
	// it matches packets carrying exactly that mark, whatever their
	// address, and Address, Protocol and Port are unused.
	FWMark    uint32
	Scheduler string
	// Flags are IPVSFlag* values; IPVSFlagHashed is masked out.
	Flags uint32
	// Timeout is the persistence timeout in seconds (IPVSFlagPersistent).
	Timeout uint32
}

// String names the virtual server as ipvsadm does: "TCP 10.1.0.2:80" or
// "FWM 268435457".
func (v VirtualServer) String() string {
	if v.FWMark != 0 {
		return "FWM " + strconv.FormatUint(uint64(v.FWMark), 10)
	}
	return v.Protocol + " " + netip.AddrPortFrom(v.Address, v.Port).String()
}

// RealServer is a destination of a virtual server, always reached by
// masquerading (IPVS NAT forwarding), as kube-proxy does.
type RealServer struct {
	Address netip.AddrPort
	Weight  int
	// ActiveConns and InactiveConns are read back from the kernel: the
	// connections IPVS still tracks to this real server.
	ActiveConns   int
	InactiveConns int
}

func (r RealServer) String() string { return r.Address.String() }

// IPVS is an open handle on a namespace's IPVS table. Close it when done.
type IPVS struct {
	ns *NetNS
	h  *ipvs.Handle
}

// OpenIPVS opens the namespace's IPVS table. It fails with an error
// wrapping ErrIPVSUnavailable when the kernel has no IPVS.
func (n *NetNS) OpenIPVS() (*IPVS, error) {
	// moby/ipvs only logs a missing generic netlink family and then fails
	// every call obscurely; asking first also autoloads ip_vs.
	if _, err := netlink.GenlFamilyGet("IPVS"); err != nil {
		return nil, fmt.Errorf("open ipvs in %s: %w: %w", n, ErrIPVSUnavailable, err)
	}
	path := n.path
	if n.own { // ipvs.New("") opens its socket where the caller is, without setns
		path = ""
	}
	h, err := ipvs.New(path)
	if err != nil {
		return nil, fmt.Errorf("open ipvs in %s: %w", n, err)
	}
	return &IPVS{ns: n, h: h}, nil
}

// Close releases the handle.
func (v *IPVS) Close() {
	if v != nil && v.h != nil {
		v.h.Close()
	}
}

var ipvsProtocols = map[string]uint16{"TCP": unix.IPPROTO_TCP, "UDP": unix.IPPROTO_UDP, "SCTP": unix.IPPROTO_SCTP}

func toIPVSService(v VirtualServer) (*ipvs.Service, error) {
	s := &ipvs.Service{
		AddressFamily: unix.AF_INET, FWMark: v.FWMark, SchedName: v.Scheduler,
		Flags: v.Flags &^ IPVSFlagHashed, Timeout: v.Timeout, Netmask: 0xffffffff,
	}
	if v.FWMark != 0 {
		return s, nil
	}
	proto, ok := ipvsProtocols[strings.ToUpper(v.Protocol)]
	if !ok {
		return nil, fmt.Errorf("virtual server %s: unknown protocol %q", v, v.Protocol)
	}
	if !v.Address.Is4() {
		return nil, fmt.Errorf("virtual server %s: not an IPv4 address", v)
	}
	s.Protocol, s.Address, s.Port = proto, net.IP(v.Address.AsSlice()), v.Port
	return s, nil
}

func fromIPVSService(s *ipvs.Service) VirtualServer {
	v := VirtualServer{FWMark: s.FWMark, Scheduler: s.SchedName, Flags: s.Flags &^ IPVSFlagHashed, Timeout: s.Timeout}
	if s.FWMark != 0 {
		return v
	}
	for name, p := range ipvsProtocols {
		if p == s.Protocol {
			v.Protocol = name
		}
	}
	if v.Protocol == "" {
		v.Protocol = "proto-" + strconv.Itoa(int(s.Protocol))
	}
	if a, ok := netip.AddrFromSlice(s.Address); ok {
		v.Address = a.Unmap()
	}
	v.Port = s.Port
	return v
}

// VirtualServers lists the table's virtual servers (IPv4 ones only).
func (v *IPVS) VirtualServers() ([]VirtualServer, error) {
	svcs, err := v.h.GetServices()
	if err != nil {
		return nil, fmt.Errorf("list ipvs virtual servers in %s: %w", v.ns, err)
	}
	out := make([]VirtualServer, 0, len(svcs))
	for _, s := range svcs {
		if s.AddressFamily == unix.AF_INET {
			out = append(out, fromIPVSService(s))
		}
	}
	return out, nil
}

// AddVirtualServer creates a virtual server. A scheduler the kernel cannot
// load fails with an error wrapping ErrSchedulerUnavailable that names its
// module.
func (v *IPVS) AddVirtualServer(vs VirtualServer) error {
	s, err := toIPVSService(vs)
	if err != nil {
		return err
	}
	if err := v.h.NewService(s); err != nil {
		return v.serviceErr("add", vs, err)
	}
	return nil
}

// UpdateVirtualServer changes an existing virtual server's scheduler,
// flags and timeout; its real servers and connections stay.
func (v *IPVS) UpdateVirtualServer(vs VirtualServer) error {
	s, err := toIPVSService(vs)
	if err != nil {
		return err
	}
	if err := v.h.UpdateService(s); err != nil {
		return v.serviceErr("update", vs, err)
	}
	return nil
}

func (v *IPVS) serviceErr(op string, vs VirtualServer, err error) error {
	// The kernel answers ENOENT when request_module("ip_vs_<sched>")
	// finds no scheduler of that name.
	if errors.Is(err, syscall.ENOENT) && vs.Scheduler != "" {
		return fmt.Errorf("%s ipvs virtual server %s in %s: scheduler %q needs kernel module ip_vs_%s, which is missing: %w: %w",
			op, vs, v.ns, vs.Scheduler, vs.Scheduler, ErrSchedulerUnavailable, err)
	}
	return fmt.Errorf("%s ipvs virtual server %s in %s: %w", op, vs, v.ns, err)
}

// DeleteVirtualServer removes a virtual server with its real servers; a
// missing one is not an error.
func (v *IPVS) DeleteVirtualServer(vs VirtualServer) error {
	s, err := toIPVSService(vs)
	if err != nil {
		return err
	}
	if err := v.h.DelService(s); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("delete ipvs virtual server %s in %s: %w", vs, v.ns, err)
	}
	return nil
}

// Flush removes every virtual server of the namespace.
func (v *IPVS) Flush() error {
	if err := v.h.Flush(); err != nil {
		return fmt.Errorf("flush ipvs in %s: %w", v.ns, err)
	}
	return nil
}

// RealServers lists a virtual server's real servers with their
// connection counts.
func (v *IPVS) RealServers(vs VirtualServer) ([]RealServer, error) {
	s, err := toIPVSService(vs)
	if err != nil {
		return nil, err
	}
	ds, err := v.h.GetDestinations(s)
	if err != nil {
		return nil, fmt.Errorf("list real servers of ipvs %s in %s: %w", vs, v.ns, err)
	}
	out := make([]RealServer, 0, len(ds))
	for _, d := range ds {
		a, ok := netip.AddrFromSlice(d.Address)
		if !ok || d.AddressFamily != unix.AF_INET {
			continue
		}
		out = append(out, RealServer{
			Address: netip.AddrPortFrom(a.Unmap(), d.Port), Weight: d.Weight,
			ActiveConns: d.ActiveConnections, InactiveConns: d.InactiveConnections,
		})
	}
	return out, nil
}

func toIPVSDest(rs RealServer) (*ipvs.Destination, error) {
	if !rs.Address.Addr().Is4() {
		return nil, fmt.Errorf("real server %s: not an IPv4 address", rs)
	}
	return &ipvs.Destination{
		AddressFamily: unix.AF_INET, Address: net.IP(rs.Address.Addr().AsSlice()), Port: rs.Address.Port(),
		Weight: rs.Weight, ConnectionFlags: ipvs.ConnectionFlagMasq,
	}, nil
}

// AddRealServer adds a real server (masquerading) to a virtual server.
func (v *IPVS) AddRealServer(vs VirtualServer, rs RealServer) error {
	return v.destOp("add", vs, rs, func(s *ipvs.Service, d *ipvs.Destination) error { return v.h.NewDestination(s, d) })
}

// UpdateRealServer sets an existing real server's weight.
func (v *IPVS) UpdateRealServer(vs VirtualServer, rs RealServer) error {
	return v.destOp("update", vs, rs, func(s *ipvs.Service, d *ipvs.Destination) error { return v.h.UpdateDestination(s, d) })
}

// DeleteRealServer removes a real server; a missing one is not an error.
// Connections IPVS still tracks to it break on their next packet when
// net.ipv4.vs.expire_nodest_conn is set: drain it first (weight 0).
func (v *IPVS) DeleteRealServer(vs VirtualServer, rs RealServer) error {
	err := v.destOp("delete", vs, rs, func(s *ipvs.Service, d *ipvs.Destination) error { return v.h.DelDestination(s, d) })
	if errors.Is(err, syscall.ENOENT) {
		return nil
	}
	return err
}

func (v *IPVS) destOp(op string, vs VirtualServer, rs RealServer, fn func(*ipvs.Service, *ipvs.Destination) error) error {
	s, err := toIPVSService(vs)
	if err != nil {
		return err
	}
	d, err := toIPVSDest(rs)
	if err != nil {
		return err
	}
	if err := fn(s, d); err != nil {
		return fmt.Errorf("%s real server %s of ipvs %s in %s: %w", op, rs, vs, v.ns, err)
	}
	return nil
}

// IPVSLoaded reports whether the ip_vs module is loaded (or built in), so
// that cleaning up IPVS state need not load it on a node that never used it.
func IPVSLoaded() bool {
	_, err := os.Stat("/sys/module/ip_vs")
	return err == nil
}

// KernelRelease is the running kernel's release (uname -r), e.g. "6.1.0-56-amd64".
func KernelRelease() (string, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "", fmt.Errorf("uname: %w", err)
	}
	return unix.ByteSliceToString(u.Release[:]), nil
}

// KernelAtLeast reports whether the running kernel's version is at least
// major.minor.
func KernelAtLeast(major, minor int) (bool, error) {
	rel, err := KernelRelease()
	if err != nil {
		return false, err
	}
	var gotMajor, gotMinor int
	if _, err := fmt.Sscanf(rel, "%d.%d", &gotMajor, &gotMinor); err != nil {
		return false, fmt.Errorf("parse kernel release %q: %w", rel, err)
	}
	return gotMajor > major || gotMajor == major && gotMinor >= minor, nil
}
