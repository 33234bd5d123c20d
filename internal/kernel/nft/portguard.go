package nft

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/kdive/kdive/internal/kernel"
)

// A PortGuard lets each guarded bridge port send only from its own
// addresses: a table of the bridge family, spoken to over netlink (no
// `nft` binary needed), whose rules never change and whose sets hold what
// each port may send:
//
//	table bridge NAME {
//	  set sources { type ifname . ether_addr . ipv4_addr }  port . MAC . address it may send from
//	  set ports   { type ifname }                           the guarded ports
//	  chain prerouting {
//	    type filter hook prerouting priority filter; policy accept;
//	    ether type ip  iifname . ether saddr . ip saddr @sources accept
//	    ether type arp iifname . ether saddr . arp saddr ip @sources
//	                   iifname . arp saddr ether . arp saddr ip @sources accept
//	    iifname @ports drop
//	  }
//	}
//
// A frame from a guarded port passes only as IPv4 or ARP from one of the
// port's own MAC and address pairs; anything else (another source address,
// another MAC — which would teach the bridge a neighbour's MAC — IPv6,
// VLAN-tagged frames) is dropped before the bridge learns or forwards it.
// Frames from other ports, and from the node itself, are not looked at.
type PortGuard struct {
	ns    *kernel.NetNS
	table string
}

// PortSource is one set element: a port may send from MAC and Addr.
type PortSource struct {
	Port string
	MAC  net.HardwareAddr
	Addr netip.Addr
}

func (s PortSource) String() string {
	return fmt.Sprintf("%s may send as %s (%s)", s.Port, s.Addr, s.MAC)
}

const (
	guardSources = "sources"
	guardPorts   = "ports"
	guardChain   = "prerouting"

	// The kernel's 4-byte registers: a concatenation is loaded into
	// consecutive ones, each field padded to a multiple of 4 bytes.
	reg32 = 8 // NFT_REG32_00
)

var guardKey = nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeEtherAddr, nftables.TypeIPAddr)

// NewPortGuard returns the guard kept in ns's bridge table named table.
func NewPortGuard(ns *kernel.NetNS, table string) *PortGuard {
	return &PortGuard{ns: ns, table: table}
}

func (g *PortGuard) conn() (*nftables.Conn, error) {
	return nftables.New(nftables.WithNetNSFd(g.ns.NetlinkNS()))
}

func (g *PortGuard) tableRef() *nftables.Table {
	return &nftables.Table{Family: nftables.TableFamilyBridge, Name: g.table}
}

func (g *PortGuard) sets() (sources, ports *nftables.Set) {
	t := g.tableRef()
	return &nftables.Set{Table: t, Name: guardSources, KeyType: guardKey, Concatenation: true},
		&nftables.Set{Table: t, Name: guardPorts, KeyType: nftables.TypeIFName, KeyByteOrder: binaryutil.NativeEndian}
}

// Allow guards each source's port and lets it send from the source's MAC
// and address, creating the table on first use; one transaction, so the
// rules and elements appear together or not at all.
func (g *PortGuard) Allow(srcs ...PortSource) error {
	var elems, ports []nftables.SetElement
	for _, s := range srcs {
		k, err := sourceKey(s)
		if err != nil {
			return err
		}
		elems = append(elems, nftables.SetElement{Key: k})
		ports = append(ports, nftables.SetElement{Key: ifnameKey(s.Port)})
	}
	c, err := g.conn()
	if err != nil {
		return g.errorf("allow sources", err)
	}
	sources, portSet := g.sets()
	if !g.intact(c) {
		t := c.AddTable(g.tableRef())
		if err := c.AddSet(sources, nil); err != nil {
			return g.errorf("allow sources", err)
		}
		if err := c.AddSet(portSet, nil); err != nil {
			return g.errorf("allow sources", err)
		}
		prio := nftables.ChainPriority(-200) // the bridge family's "filter"
		accept := nftables.ChainPolicyAccept
		ch := c.AddChain(&nftables.Chain{Name: guardChain, Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookPrerouting, Priority: &prio, Policy: &accept})
		c.FlushChain(ch)
		for _, exprs := range guardRules(sources, portSet) {
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: exprs})
		}
	}
	if len(elems) > 0 {
		if err := c.SetAddElements(sources, elems); err != nil {
			return g.errorf("allow sources", err)
		}
		if err := c.SetAddElements(portSet, ports); err != nil {
			return g.errorf("allow sources", err)
		}
	}
	if err := c.Flush(); err != nil {
		return g.errorf(fmt.Sprintf("allow %v", srcs), err)
	}
	return nil
}

// intact tells whether the table holds both sets and the chain with the
// rules guardRules builds, so that Allow need not rewrite them: a rule
// rewritten costs the commit an RCU grace period (about 8 ms of a 0.4 ms
// Allow here).
func (g *PortGuard) intact(c *nftables.Conn) bool {
	t := g.tableRef()
	for _, name := range []string{guardSources, guardPorts} {
		if _, err := c.GetSetByName(t, name); err != nil {
			return false
		}
	}
	rules, err := c.GetRules(t, &nftables.Chain{Name: guardChain, Table: t})
	if err != nil {
		return false
	}
	sources, ports := g.sets()
	want := guardRules(sources, ports)
	if len(rules) != len(want) {
		return false
	}
	for i, r := range rules {
		if len(r.Exprs) != len(want[i]) {
			return false
		}
		for j, e := range r.Exprs {
			if exprKey(e) != exprKey(want[i][j]) {
				return false
			}
		}
	}
	return true
}

// exprKey is what intact compares of an expression: its kind and what it
// loads, compares, looks up or decides (not the registers or set IDs,
// which the kernel may report otherwise).
func exprKey(e expr.Any) string {
	switch e := e.(type) {
	case *expr.Meta:
		return fmt.Sprintf("meta %d", e.Key)
	case *expr.Payload:
		return fmt.Sprintf("payload %d %d %d", e.Base, e.Offset, e.Len)
	case *expr.Cmp:
		return fmt.Sprintf("cmp %d %x", e.Op, e.Data)
	case *expr.Lookup:
		return fmt.Sprintf("lookup %s %t", e.SetName, e.Invert)
	case *expr.Verdict:
		return fmt.Sprintf("verdict %d %s", e.Kind, e.Chain)
	}
	return fmt.Sprintf("%T", e)
}

// guardRules are the chain's three rules (see PortGuard).
func guardRules(sources, ports *nftables.Set) [][]expr.Any {
	etherType := func(t uint16) []expr.Any {
		return []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseLLHeader, Offset: 12, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{byte(t >> 8), byte(t)}},
		}
	}
	// lookup loads iifname . mac . address into the registers and looks
	// the concatenation up in sources.
	lookup := func(mac, addr *expr.Payload) []expr.Any {
		mac.DestRegister, addr.DestRegister = reg32+4, reg32+6
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: reg32},
			mac, addr,
			&expr.Lookup{SourceRegister: reg32, SetName: sources.Name, SetID: sources.ID},
		}
	}
	ethSrc := func() *expr.Payload { return &expr.Payload{Base: expr.PayloadBaseLLHeader, Offset: 6, Len: 6} }
	accept := &expr.Verdict{Kind: expr.VerdictAccept}

	ip := etherType(unix.ETH_P_IP)
	ip = append(ip, lookup(ethSrc(), &expr.Payload{Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4})...)
	ip = append(ip, accept)

	// ARP for Ethernet and IPv4: sender MAC at 8, sender address at 14.
	arp := etherType(unix.ETH_P_ARP)
	arp = append(arp, lookup(ethSrc(), &expr.Payload{Base: expr.PayloadBaseNetworkHeader, Offset: 14, Len: 4})...)
	arp = append(arp, lookup(&expr.Payload{Base: expr.PayloadBaseNetworkHeader, Offset: 8, Len: 6},
		&expr.Payload{Base: expr.PayloadBaseNetworkHeader, Offset: 14, Len: 4})...)
	arp = append(arp, accept)

	drop := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Lookup{SourceRegister: 1, SetName: ports.Name, SetID: ports.ID},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}
	return [][]expr.Any{ip, arp, drop}
}

// Sources lists the table's elements; no table: none.
func (g *PortGuard) Sources() ([]PortSource, error) {
	elems, err := g.elements(guardSources)
	var out []PortSource
	for _, e := range elems {
		if s, ok := parseSourceKey(e.Key); ok {
			out = append(out, s)
		}
	}
	return out, err
}

// Ports lists the guarded ports; no table: none.
func (g *PortGuard) Ports() ([]string, error) {
	elems, err := g.elements(guardPorts)
	var out []string
	for _, e := range elems {
		out = append(out, ifnameOf(e.Key))
	}
	return out, err
}

// elements lists the elements of the set named; no table: none.
func (g *PortGuard) elements(name string) ([]nftables.SetElement, error) {
	c, err := g.conn()
	if err != nil {
		return nil, g.errorf("list "+name, err)
	}
	set, err := c.GetSetByName(g.tableRef(), name)
	if errors.Is(err, unix.ENOENT) {
		return nil, nil
	}
	if err != nil {
		return nil, g.errorf("list "+name, err)
	}
	elems, err := c.GetSetElements(set)
	if err != nil {
		return nil, g.errorf("list "+name, err)
	}
	return elems, nil
}

// Forget deletes every element of the ports named, in one transaction: they
// are no longer guarded, nor allowed anything. Elements already gone (and a
// missing table) are success.
func (g *PortGuard) Forget(ports ...string) error {
	srcs, err := g.Sources()
	if err != nil {
		return err
	}
	guarded, err := g.Ports()
	if err != nil {
		return err
	}
	var del, delPorts []nftables.SetElement
	for _, s := range srcs {
		if slices.Contains(ports, s.Port) {
			k, _ := sourceKey(s)
			del = append(del, nftables.SetElement{Key: k})
		}
	}
	for _, p := range guarded {
		if slices.Contains(ports, p) {
			delPorts = append(delPorts, nftables.SetElement{Key: ifnameKey(p)})
		}
	}
	if len(del) == 0 && len(delPorts) == 0 {
		return nil
	}
	c, err := g.conn()
	if err != nil {
		return g.errorf("forget ports", err)
	}
	sources, portSet := g.sets()
	if len(del) > 0 {
		if err := c.SetDeleteElements(sources, del); err != nil {
			return g.errorf("forget ports", err)
		}
	}
	if len(delPorts) > 0 {
		if err := c.SetDeleteElements(portSet, delPorts); err != nil {
			return g.errorf("forget ports", err)
		}
	}
	if err := c.Flush(); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return g.Forget(ports...) // someone deleted some meanwhile: list again
		}
		return g.errorf(fmt.Sprintf("forget %v", ports), err)
	}
	return nil
}

// Delete removes the whole table: no port is guarded any more. A missing
// table is success.
func (g *PortGuard) Delete() error {
	c, err := g.conn()
	if err != nil {
		return g.errorf("delete", err)
	}
	c.AddTable(g.tableRef())
	c.DelTable(g.tableRef())
	if err := c.Flush(); err != nil {
		return g.errorf("delete", err)
	}
	return nil
}

func (g *PortGuard) errorf(what string, err error) error {
	return fmt.Errorf("port guard (table bridge %s) in %s: %s: %w", g.table, g.ns, what, err)
}

// ifnameKey is an interface name as the kernel compares it: 16 bytes,
// NUL-padded.
func ifnameKey(name string) []byte {
	k := make([]byte, unix.IFNAMSIZ)
	copy(k, name)
	return k
}

func ifnameOf(k []byte) string {
	if i := slices.Index(k, 0); i >= 0 {
		k = k[:i]
	}
	return string(k)
}

// sourceKey is the concatenation port . MAC . address, each field padded
// to a multiple of 4 bytes.
func sourceKey(s PortSource) ([]byte, error) {
	if len(s.Port) == 0 || len(s.Port) >= unix.IFNAMSIZ {
		return nil, fmt.Errorf("port guard: port name %q: want 1 to %d bytes", s.Port, unix.IFNAMSIZ-1)
	}
	if len(s.MAC) != 6 {
		return nil, fmt.Errorf("port guard: %s: MAC %q is not an Ethernet address", s.Port, s.MAC)
	}
	if !s.Addr.Is4() {
		return nil, fmt.Errorf("port guard: %s: address %s is not IPv4", s.Port, s.Addr)
	}
	k := ifnameKey(s.Port)
	k = append(k, s.MAC...)
	k = append(k, 0, 0)
	a := s.Addr.As4()
	return append(k, a[:]...), nil
}

func parseSourceKey(k []byte) (PortSource, bool) {
	if len(k) != unix.IFNAMSIZ+8+4 {
		return PortSource{}, false
	}
	mac := slices.Clone(k[unix.IFNAMSIZ : unix.IFNAMSIZ+6])
	addr := netip.AddrFrom4([4]byte(k[unix.IFNAMSIZ+8:]))
	return PortSource{Port: ifnameOf(k[:unix.IFNAMSIZ]), MAC: net.HardwareAddr(mac), Addr: addr}, true
}
