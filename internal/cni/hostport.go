package cni

// hostPorts: what the upstream portmap plugin does with iptables chains per
// container, kdive does with one nftables table whose rules never change and
// whose maps hold every pod's mappings, so an ADD or DEL is a few element
// updates in one atomic `nft -f` transaction:
//
//	table ip kdive-hostport {
//	  map hostports     proto . port -> podIP . containerPort (every node address)
//	  map hostports-ip  hostIP . proto . port -> podIP . containerPort
//	  set hairpin       podIP . podIP
//	  chain prerouting  nat, dstnat - 1: fib daddr type local, not 127.0.0.0/8: jump hostports
//	  chain output      the same for the node's own connections, and to
//	                    127.0.0.0/8 through @hostports-ip only
//	  chain hostports   dnat through @hostports-ip, then through @hostports
//	  chain postrouting nat, srcnat - 1: ct status dnat, saddr . daddr in @hairpin: masquerade
//	}
//
// The chains run just before kube-proxy-like service rules (dstnat), so a
// hostPort wins over a service port on a node address. A map lookup that
// misses ends the rule, so the second dnat rule is the fallback of the
// first. Loopback destinations are excluded but for the node's own
// connections to a hostPort whose hostIP is loopback (upstream's
// conformance test connects so, from a node address): route_localnet stays
// off (CVE-2020-8558), so nothing from outside the node, and no
// connection from a loopback source, is ever forwarded. The hairpin set masquerades a pod reaching its own
// hostPort through a node address; without it the pod would answer itself
// from its own address and drop the reply.
//
// The kernel is the arbiter of who holds a port: `add element` with a key
// the map already holds with other data fails with EEXIST (with the same
// data it is a no-op), so two pods can never overwrite each other. Under
// the state directory's lock ADD first lists the maps to name the port and
// its holder in the error.
//
// An element is an attachment's if it leads to the attachment's address:
// pod addresses are unique and a pod's address is released only after its
// elements are deleted (DEL and GC keep the address when deleting fails),
// so no element ever leads to a free or reassigned address. DEL and GC
// delete the elements an attachment's state file records, if they still
// lead where they did, and every element leading to the address IPAM holds
// for it; GC also sweeps elements leading to no allocated address.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/kdive/kdive/internal/cni/ipam"
	"github.com/kdive/kdive/internal/fileutil"
	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/nft"
)

const (
	hostPortTable = "kdive-hostport"
	hostPortMap   = "hostports"
	hostPortIPMap = "hostports-ip"
	hairpinSet    = "hairpin"

	// hostPortDir is the state directory under the plugin's data dir.
	hostPortDir = "hostports"
	// hostPortTimeout bounds the nft calls of one command.
	hostPortTimeout = 30 * time.Second
)

// hostPortTableID is the table, as the nft door names it.
var hostPortTableID = nft.Table{Family: nft.IPv4, Name: hostPortTable}

// addSkeleton adds to tx the table, its maps, set and chains, and rewrites
// the chains' rules, with idempotent operations only: it opens every ADD's
// transaction. nft 1.0 knows the priority names dstnat and srcnat for
// prerouting and postrouting only, so the priorities are numbers.
func addSkeleton(tx *nft.Transaction) {
	tx.Add(&nft.Table{})
	tx.Add(&nft.Map{Name: hostPortMap, Type: "inet_proto . inet_service : ipv4_addr . inet_service"})
	tx.Add(&nft.Map{Name: hostPortIPMap, Type: "ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service"})
	tx.Add(&nft.Set{Name: hairpinSet, Type: "ipv4_addr . ipv4_addr"})
	chains := []*nft.Chain{
		{Name: "hostports"},
		{Name: "prerouting", Type: "nat", Hook: "prerouting", Priority: "-101"}, // dstnat - 1
		{Name: "output", Type: "nat", Hook: "output", Priority: "-101"},         // dstnat - 1
		{Name: "postrouting", Type: "nat", Hook: "postrouting", Priority: "99"}, // srcnat - 1
	}
	for _, c := range chains {
		tx.Add(c)
	}
	for _, c := range chains {
		tx.Flush(c)
	}
	for _, r := range []nft.Rule{
		{Chain: "hostports", Rule: "meta l4proto { tcp, udp, sctp } dnat ip to ip daddr . meta l4proto . th dport map @" + hostPortIPMap},
		{Chain: "hostports", Rule: "meta l4proto { tcp, udp, sctp } dnat ip to meta l4proto . th dport map @" + hostPortMap},
		{Chain: "prerouting", Rule: "fib daddr type local ip daddr != 127.0.0.0/8 jump hostports"},
		{Chain: "output", Rule: "fib daddr type local ip daddr != 127.0.0.0/8 jump hostports"},
		{Chain: "output", Rule: "ip daddr 127.0.0.0/8 meta l4proto { tcp, udp, sctp } dnat ip to ip daddr . meta l4proto . th dport map @" + hostPortIPMap},
		{Chain: "postrouting", Rule: "ct status dnat ip saddr . ip daddr @" + hairpinSet + " masquerade"},
	} {
		tx.Add(&r)
	}
}

// CleanupHostPorts deletes the hostPort table from host (for `kdive agent
// --cleanup`): every pod's hostPorts stop working. A missing table is
// success. State files stay; a later DEL or GC finds nothing to delete.
func CleanupHostPorts(ctx context.Context, host *kernel.NetNS) error {
	tx := nft.NewTransaction(hostPortTableID)
	tx.Add(&nft.Table{})
	tx.Delete(&nft.Table{})
	if err := nft.New(host).Run(ctx, tx); err != nil {
		return fmt.Errorf("delete the hostPort table: %w", err)
	}
	return nil
}

// element is one entry of the table's maps or set, in nft syntax.
type element struct {
	set, key, value string // value is empty in the set
}

func (e element) String() string {
	if e.value == "" {
		return e.key
	}
	return e.key + " : " + e.value
}

// leadsTo is the pod address an element sends traffic to (maps) or
// masquerades for (set): the first field of its value, or of its key.
func (e element) leadsTo() netip.Addr {
	s := e.value
	if s == "" {
		s = e.key
	}
	first, _, _ := strings.Cut(s, " . ")
	a, err := netip.ParseAddr(first)
	if err != nil {
		return netip.Addr{}
	}
	return a
}

// hostPortState is an attachment's state file: what DEL needs to find its
// elements.
type hostPortState struct {
	ContainerID string        `json:"containerID"`
	IfName      string        `json:"ifName"`
	PodIP       netip.Addr    `json:"podIP"`
	Mappings    []PortMapping `json:"mappings"`
}

func mappingElement(m PortMapping, podIP netip.Addr) element {
	e := element{set: hostPortMap, key: fmt.Sprintf("%s . %d", m.Protocol, m.HostPort),
		value: fmt.Sprintf("%s . %d", podIP, m.ContainerPort)}
	if m.HostIP.IsValid() {
		e.set, e.key = hostPortIPMap, m.HostIP.String()+" . "+e.key
	}
	return e
}

func hairpinElement(podIP netip.Addr) element {
	return element{set: hairpinSet, key: podIP.String() + " . " + podIP.String()}
}

// elements are the entries of the attachment: one per mapping and its
// hairpin entry.
func (s *hostPortState) elements() []element {
	if len(s.Mappings) == 0 || !s.PodIP.IsValid() {
		return nil
	}
	var out []element
	for _, m := range s.Mappings {
		out = append(out, mappingElement(m, s.PodIP))
	}
	return append(out, hairpinElement(s.PodIP))
}

func (e element) object() *nft.Element {
	o := &nft.Element{Key: []string{e.key}}
	if e.value == "" {
		o.Set = e.set
	} else {
		o.Map, o.Value = e.set, []string{e.value}
	}
	return o
}

// hostPorts programs attachments' mappings into the node's namespace and
// keeps their state files in dir, one "<containerID>@<ifname>.json" each
// ('@' cannot occur in a container ID, so no two attachments share a name).
type hostPorts struct {
	nft nft.Interface
	dir string
}

func newHostPorts(host *kernel.NetNS, dataDir string) *hostPorts {
	return &hostPorts{nft: nft.New(host), dir: filepath.Join(dataDir, hostPortDir)}
}

// add programs a's mappings to ip, all or none, and records them. It fails,
// naming the port and its holder, when another attachment holds one of
// them. No mappings: nothing to do (a node without hostPorts gets no table).
func (h *hostPorts) add(ctx context.Context, a ipam.Attachment, ip netip.Addr, ms []PortMapping) error {
	if len(ms) == 0 {
		return nil
	}
	st := &hostPortState{ContainerID: a.ContainerID, IfName: a.IfName, PodIP: ip, Mappings: ms}
	return h.locked(func() error {
		have, err := h.list(ctx)
		if err != nil {
			return fmt.Errorf("program hostPorts of %s: %w", a, err)
		}
		for _, m := range ms {
			e := mappingElement(m, ip)
			if v, ok := have.elems[e.set][e.key]; ok && v != e.value {
				return h.taken(m, element{set: e.set, key: e.key, value: v})
			}
		}
		path := h.statePath(a)
		if err := writeFileAtomic(path, st); err != nil {
			return fmt.Errorf("record hostPorts of %s: %w", a, err)
		}
		tx := nft.NewTransaction(hostPortTableID)
		addSkeleton(tx)
		for _, e := range st.elements() {
			tx.Add(e.object())
		}
		if err := h.nft.Run(ctx, tx); err != nil {
			os.Remove(path)
			return fmt.Errorf("program hostPorts of %s: %w", a, err)
		}
		return nil
	})
}

// taken is the error for a hostPort another attachment holds.
func (h *hostPorts) taken(m PortMapping, held element) error {
	port := fmt.Sprintf("hostPort %d/%s", m.HostPort, m.Protocol)
	if m.HostIP.IsValid() {
		port += " on " + m.HostIP.String()
	}
	to := strings.Replace(held.value, " . ", ":", 1)
	owner := "another pod"
	if states, err := h.states(); err == nil {
		for _, s := range states {
			if s.PodIP == held.leadsTo() && s.ContainerID != "" {
				owner = "pod " + s.ContainerID + "/" + s.IfName
			}
		}
	}
	return fmt.Errorf("%s is already taken: the node forwards it to %s (%s)", port, to, owner)
}

// remove deletes a's elements and state file: those its state file records
// that still lead where they did, and (when valid) every element leading to
// held, the address IPAM holds for a. Without a state file a has no
// elements (ADD records them before adding them), so no nft runs: nodes
// without hostPorts never need nft.
func (h *hostPorts) remove(ctx context.Context, a ipam.Attachment, held netip.Addr) error {
	if _, err := os.Lstat(h.statePath(a)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return h.locked(func() error { return h.removeLocked(ctx, a, held) })
}

func (h *hostPorts) removeLocked(ctx context.Context, a ipam.Attachment, held netip.Addr) error {
	path := h.statePath(a)
	st, err := readState(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil
	case err != nil:
		st = nil // unreadable: only held tells which elements are a's
	}
	have, err := h.list(ctx)
	if err != nil {
		return fmt.Errorf("remove hostPorts of %s: %w", a, err)
	}
	var del []element
	if st != nil {
		for _, e := range st.elements() {
			if v, ok := have.elems[e.set][e.key]; ok && v == e.value {
				del = append(del, e)
			}
		}
	}
	if held.IsValid() {
		del = append(del, have.leadingTo(func(ip netip.Addr) bool { return ip == held })...)
	}
	if err := h.delete(ctx, del); err != nil {
		return fmt.Errorf("remove hostPorts of %s: %w", a, err)
	}
	if err := fileutil.Remove(filepath.Dir(path), filepath.Base(path)); err != nil {
		return fmt.Errorf("remove hostPorts of %s: %w", a, err)
	}
	return nil
}

// delete removes elements in one transaction. Elements (or the table) gone
// meanwhile, say by CleanupHostPorts, are success.
func (h *hostPorts) delete(ctx context.Context, elems []element) error {
	elems = slices.CompactFunc(slices.SortedFunc(slices.Values(elems), func(x, y element) int {
		return strings.Compare(x.set+"\x00"+x.key, y.set+"\x00"+y.key)
	}), func(x, y element) bool { return x.set == y.set && x.key == y.key })
	if len(elems) == 0 {
		return nil
	}
	tx := nft.NewTransaction(hostPortTableID)
	for _, e := range elems {
		tx.Delete(e.object())
	}
	err := h.nft.Run(ctx, tx)
	if err == nil {
		return nil
	}
	if again, lerr := h.list(ctx); lerr == nil && !slices.ContainsFunc(elems, func(e element) bool {
		_, ok := again.elems[e.set][e.key]
		return ok
	}) {
		return nil
	}
	return err
}

// gc removes the hostPorts of every attachment with a state file that is
// not valid (allocs: the addresses IPAM holds, before its GC) and returns
// those it could not clean, whose addresses must stay allocated.
func (h *hostPorts) gc(ctx context.Context, valid map[ipam.Attachment]bool, allocs []ipam.Allocation) ([]ipam.Attachment, error) {
	var failed []ipam.Attachment
	err := h.locked(func() error {
		names, err := h.stateNames()
		if err != nil {
			return err
		}
		var errs []error
		for _, a := range names {
			if valid[a] {
				continue
			}
			var held netip.Addr
			for _, al := range allocs {
				if al.Attachment == a {
					held = al.Addr
				}
			}
			if err := h.removeLocked(ctx, a, held); err != nil {
				failed = append(failed, a)
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	})
	return failed, err
}

// sweep deletes elements leading to an address that is not allocated:
// left by a state file lost or unreadable. Addresses are allocated before
// their elements are added and released after they are deleted, so under
// the lock such an element belongs to no one.
func (h *hostPorts) sweep(ctx context.Context, allocated func() ([]ipam.Allocation, error)) error {
	if _, err := os.Lstat(h.dir); errors.Is(err, os.ErrNotExist) {
		return nil // no hostPort was ever programmed through this data dir
	}
	return h.locked(func() error {
		have, err := h.list(ctx)
		if err != nil || !have.exists {
			return err
		}
		allocs, err := allocated()
		if err != nil {
			return err
		}
		held := map[netip.Addr]bool{}
		for _, al := range allocs {
			held[al.Addr] = true
		}
		if err := h.delete(ctx, have.leadingTo(func(ip netip.Addr) bool { return !held[ip] })); err != nil {
			return fmt.Errorf("remove hostPorts of freed addresses: %w", err)
		}
		return nil
	})
}

// check describes what of a's mappings to ip the node lacks.
func (h *hostPorts) check(ctx context.Context, a ipam.Attachment, ip netip.Addr, ms []PortMapping) []string {
	if len(ms) == 0 {
		return nil
	}
	have, err := h.list(ctx)
	if err != nil {
		return []string{"node: " + err.Error()}
	}
	if !have.exists {
		return []string{fmt.Sprintf("node: no nftables table ip %s for the pod's hostPorts", hostPortTable)}
	}
	var problems []string
	for _, c := range []string{"prerouting", "output", "postrouting", "hostports"} {
		if !have.chains[c] {
			problems = append(problems, fmt.Sprintf("node: table ip %s has no chain %s", hostPortTable, c))
		}
	}
	for _, m := range ms {
		e := mappingElement(m, ip)
		if v, ok := have.elems[e.set][e.key]; !ok || v != e.value {
			where := "nowhere"
			if ok {
				where = "to " + strings.Replace(v, " . ", ":", 1)
			}
			problems = append(problems, fmt.Sprintf("node: hostPort %s leads %s, not to %s:%d", m, where, ip, m.ContainerPort))
		}
	}
	if e := hairpinElement(ip); !have.has(e) {
		problems = append(problems, fmt.Sprintf("node: no hairpin entry for %s in set %s", ip, hairpinSet))
	}
	if _, err := readState(h.statePath(a)); err != nil {
		problems = append(problems, fmt.Sprintf("node: hostPorts of %s are not recorded (DEL could not remove them): %v", a, err))
	}
	return problems
}

// programmed is what the kernel holds of the table.
type programmed struct {
	exists bool
	chains map[string]bool
	elems  map[string]map[string]string // set or map -> key -> value ("" in the set)
}

func (p *programmed) has(e element) bool {
	v, ok := p.elems[e.set][e.key]
	return ok && v == e.value
}

// leadingTo lists the elements whose pod address matches.
func (p *programmed) leadingTo(match func(netip.Addr) bool) []element {
	var out []element
	for set, es := range p.elems {
		for k, v := range es {
			e := element{set: set, key: k, value: v}
			if ip := e.leadsTo(); ip.IsValid() && match(ip) {
				out = append(out, e)
			}
		}
	}
	return out
}

// list reads the table; a missing table is an empty one.
func (h *hostPorts) list(ctx context.Context) (*programmed, error) {
	l, err := h.nft.List(ctx, hostPortTableID)
	if errors.Is(err, nft.ErrNotFound) {
		return &programmed{}, nil
	}
	if err != nil {
		return nil, err
	}
	p := &programmed{exists: true, chains: map[string]bool{}, elems: map[string]map[string]string{}}
	for _, c := range l.Chains {
		p.chains[c.Name] = true
	}
	add := func(name string, es []nft.Element) {
		m := map[string]string{}
		p.elems[name] = m
		for _, e := range es {
			m[strings.Join(e.Key, " . ")] = strings.Join(e.Value, " . ")
		}
	}
	for _, s := range l.Sets {
		add(s.Name, s.Elements)
	}
	for _, m := range l.Maps {
		add(m.Name, m.Elements)
	}
	return p, nil
}

func (h *hostPorts) statePath(a ipam.Attachment) string {
	return filepath.Join(h.dir, a.ContainerID+"@"+a.IfName+".json")
}

// stateNames lists the attachments with a state file, from the file names.
func (h *hostPorts) stateNames() ([]ipam.Attachment, error) {
	entries, err := os.ReadDir(h.dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read hostPort state: %w", err)
	}
	var out []ipam.Attachment
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || strings.HasPrefix(name, ".") || !e.Type().IsRegular() {
			continue // the lock, temporary files
		}
		if id, ifname, ok := strings.Cut(name, "@"); ok && id != "" && ifname != "" {
			out = append(out, ipam.Attachment{ContainerID: id, IfName: ifname})
		}
	}
	return out, nil
}

// states reads every readable state file.
func (h *hostPorts) states() ([]*hostPortState, error) {
	names, err := h.stateNames()
	if err != nil {
		return nil, err
	}
	var out []*hostPortState
	for _, a := range names {
		if st, err := readState(h.statePath(a)); err == nil {
			out = append(out, st)
		}
	}
	return out, nil
}

func readState(path string) (*hostPortState, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var st hostPortState
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &st, nil
}

// writeFileAtomic writes v as JSON to path, mode 0600, atomically (a dot
// file, which stateNames skips, then a rename).
func writeFileAtomic(path string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return fileutil.WriteAtomic(path, append(data, '\n'), 0o600)
}

// locked runs fn holding the state directory's lock, which serialises the
// hostPort work of concurrent plugin processes.
func (h *hostPorts) locked(fn func() error) error {
	return fileutil.WithLock(h.dir, "lock", 0o700, fn)
}

// hostPortContext bounds a command's hostPort work.
func hostPortContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), hostPortTimeout)
}
