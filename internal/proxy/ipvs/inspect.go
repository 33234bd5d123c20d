package ipvs

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy"
	"github.com/kdive/kdive/internal/xtables"
)

// Reading the mode back. Inspect rebuilds a Ruleset from what the kernel
// holds — virtual servers with their real servers and weights, the ipsets,
// kube-ipvs0's addresses, the mode's iptables chains and the jumps into
// them — so that Trace, the same walker the case table checks rendered
// plans with, runs over the kernel's state instead of over a plan. The
// service names come from the name index (names.go); everything the
// kernel acts on (address kinds, Local policies, source ranges, weights)
// is taken from the kernel objects themselves where they show it.

// Inspect reads kdive's IPVS state from the kernel of ns: the virtual servers and their real servers (IPVS netlink via the kernel package's OpenIPVS), the ipsets (OpenIPSets), kube-ipvs0's addresses and the iptables rules, and returns it as an Inspection.
func Inspect(ctx context.Context, ns *kernel.NetNS) (proxy.Inspection, error) {
	s, err := readKernel(ctx, ns)
	if err != nil {
		return nil, fmt.Errorf("ipvs: inspect %s: %w", ns, err)
	}
	return s.inspection(), nil
}

// snapshot is the kernel state Inspect reads, before it is interpreted.
type snapshot struct {
	links []kernel.Link
	vss   []kernel.VirtualServer
	rss   map[string][]kernel.RealServer // by virtual server key
	stats map[string]kernel.IPVSStats    // nil: not read
	sets  []kernel.IPSet
	names []kernel.CommentedEntry
	// saved is the iptables flavour holding the mode's chains.
	saved   savedTables
	flavour string
	notes   []string
}

func readKernel(ctx context.Context, ns *kernel.NetNS) (*snapshot, error) {
	s := &snapshot{rss: map[string][]kernel.RealServer{}}
	var err error
	if s.links, err = ns.Links(); err != nil {
		return nil, err
	}
	// Loading ip_vs or ip_set only to find them empty would change the
	// node: a module that is not loaded holds nothing of the mode.
	if kernel.IPVSLoaded() {
		if err := s.readIPVS(ns); err != nil {
			return nil, err
		}
	} else {
		s.notes = append(s.notes, "ip_vs is not loaded: no virtual servers")
	}
	if kernel.IPSetLoaded() {
		if err := s.readSets(ns); err != nil {
			return nil, err
		}
	} else {
		s.notes = append(s.notes, "ip_set is not loaded: no ipsets")
	}
	return s, s.readIptables(ctx, ns)
}

func (s *snapshot) readIPVS(ns *kernel.NetNS) error {
	h, err := ns.OpenIPVS()
	if err != nil {
		return err
	}
	defer h.Close()
	if s.vss, err = h.VirtualServers(); err != nil {
		return err
	}
	for _, vs := range s.vss {
		rs, err := h.RealServers(vs)
		if err != nil {
			return err
		}
		s.rss[vs.String()] = rs
	}
	if s.stats, err = h.Stats(); err != nil {
		s.notes = append(s.notes, fmt.Sprintf("no IPVS counters: %v", err))
	}
	return nil
}

func (s *snapshot) readSets(ns *kernel.NetNS) error {
	sets, err := ns.OpenIPSets()
	if err != nil {
		return err
	}
	defer sets.Close()
	if s.sets, err = sets.ListAll(); err != nil {
		return err
	}
	s.names, err = sets.ListWithComments(setNames)
	if errors.Is(err, kernel.ErrNotFound) {
		s.notes = append(s.notes, fmt.Sprintf("no ipset %s: virtual servers cannot be named", setNames))
		return nil
	}
	return err
}

// readIptables reads both flavours and keeps the one holding the mode's
// chains (nft's if both do; the other is noted).
func (s *snapshot) readIptables(ctx context.Context, ns *kernel.NetNS) error {
	var errs []error
	for _, f := range xtables.Flavours {
		out, err := ns.Run(ctx, "", f.Save())
		if xtables.NotInstalled(err) {
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("read iptables (%s): %w", f, err))
			continue
		}
		if !xtables.HasChain(out, chainFirewall) {
			continue
		}
		if s.saved != nil {
			s.notes = append(s.notes, fmt.Sprintf("iptables-%s holds the mode's chains too; showing iptables-%s's", f, s.flavour))
			continue
		}
		s.saved, s.flavour = parseSave(out), string(f)
	}
	if s.saved == nil {
		if len(errs) > 0 {
			return errors.Join(errs...)
		}
		s.notes = append(s.notes, "no iptables flavour holds the mode's chains")
	}
	return nil
}

// inspection is the kernel's state as a Ruleset with what LB needs
// besides.
type inspection struct {
	r       *Ruleset
	stats   map[string]kernel.IPVSStats
	names   map[string]recordedName // by virtual server key
	cluster []netip.Prefix
	masqAll bool
	flavour string
	notes   []string
}

var _ proxy.Inspection = (*inspection)(nil)

var builtinChains = []string{"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}

func (s *snapshot) inspection() *inspection {
	in := &inspection{r: &Ruleset{}, stats: s.stats, names: map[string]recordedName{}, flavour: s.flavour, notes: slices.Clone(s.notes)}
	r := in.r
	for _, l := range s.links {
		for _, p := range l.Addrs {
			switch {
			case !p.Addr().Is4():
			case l.Name == Device:
				r.Addresses = append(r.Addresses, p.Addr())
			default:
				r.NodeIPs = append(r.NodeIPs, p.Addr())
			}
		}
	}
	slices.SortFunc(r.Addresses, netip.Addr.Compare)
	slices.SortFunc(r.NodeIPs, netip.Addr.Compare)
	have := map[string]kernel.IPSet{}
	for _, set := range s.sets {
		have[set.Name] = set
	}
	for _, set := range newSets() {
		k, ok := have[set.Name]
		if !ok {
			continue
		}
		set.Type, set.SkbInfo = k.Type, k.SkbInfo
		set.Entries = sortEntries(slices.Clone(k.Entries))
		r.Sets = append(r.Sets, set)
	}
	in.readChains(s.saved)
	for _, n := range s.names {
		rec, ok := parseNameComment(n.Comment)
		if !ok {
			in.notes = append(in.notes, fmt.Sprintf("%s %s: comment %q is no service port name", setNames, n.Key(), n.Comment))
			continue
		}
		in.names[addrVS(n.IPSetEntry).String()] = rec
	}
	for _, vs := range s.vss {
		in.addVirtualServer(vs, s.rss[vs.String()])
	}
	slices.SortFunc(r.VirtualServers, compareVS)
	in.cluster, in.masqAll = configFromRules(r)
	return in
}

// addrVS is the address virtual server a set entry (ip,proto:port) names.
func addrVS(e kernel.IPSetEntry) kernel.VirtualServer {
	return kernel.VirtualServer{Address: e.IP, Protocol: strings.ToUpper(e.Proto), Port: e.Port}
}

// readChains takes the mode's chains and the rules of the built-in chains
// that jump to them, leaving out (and noting) rules the walker cannot
// follow.
func (in *inspection) readChains(saved savedTables) {
	for _, table := range tables {
		t := saved[table]
		ours := append(slices.Clone(ipvsOnlyChains[table]), sharedChains[table]...)
		for _, name := range ours {
			if lines, ok := t[name]; ok {
				in.r.Chains = append(in.r.Chains, Chain{Table: table, Name: name, Rules: in.traceable(table, lines)})
			}
		}
		for _, b := range builtinChains {
			for _, rule := range in.traceable(table, t[b]) {
				if slices.Contains(ours, rule.Jump) {
					in.r.Jumps = append(in.r.Jumps, Jump{Table: table, Chain: b, Rule: rule})
				}
			}
		}
	}
}

// traceable reads saved rule lines ("-A CHAIN ...") into rules.
func (in *inspection) traceable(table string, lines []string) []xtables.Rule {
	out := make([]xtables.Rule, 0, len(lines))
	for _, line := range lines {
		r, err := parseLine(line)
		if err != nil {
			in.notes = append(in.notes, fmt.Sprintf("%s: rule not understood, left out of traces (%v): %s", table, err, line))
			continue
		}
		out = append(out, r)
	}
	return out
}

// parseLine reads a saved "-A CHAIN rule" line (xtables.ParseRule),
// refusing what the walker cannot follow: a rule that matches only
// sometimes (-m statistic, -m recent), which the mode never writes.
func parseLine(line string) (xtables.Rule, error) {
	_, text, _ := strings.Cut(strings.TrimPrefix(line, "-A "), " ")
	r, err := xtables.ParseRule(text)
	switch {
	case err != nil:
		return xtables.Rule{}, err
	case r.Recent != nil:
		return xtables.Rule{}, errors.New("match -m recent")
	case r.Probability != 0:
		return xtables.Rule{}, errors.New("match -m statistic")
	}
	return r, nil
}

func (in *inspection) addVirtualServer(vs kernel.VirtualServer, rss []kernel.RealServer) {
	v := VirtualServer{VirtualServer: vs, RealServers: slices.Clone(rss)}
	slices.SortFunc(v.RealServers, func(a, b kernel.RealServer) int { return a.Address.Compare(b.Address) })
	if vs.FWMark != 0 {
		if ourMark(vs.FWMark) {
			v.Kind = KindShortCircuit
		}
		// KUBE-SHORT-CIRCUIT maps the service's external addresses to it.
		if sc := in.r.Set(setShortCircuit); sc != nil {
			for _, e := range sc.Entries {
				if rec, ok := in.names[addrVS(e).String()]; ok && e.SkbMark == vs.FWMark {
					v.Service = rec.name
					v.Service.Protocol = model.Protocol(strings.ToUpper(e.Proto))
					break
				}
			}
		}
	} else {
		v.Kind = in.kindFromSets(vs)
		if rec, ok := in.names[vs.String()]; ok {
			v.Service = rec.name
			v.Service.Protocol = model.Protocol(vs.Protocol)
			if v.Kind == "" {
				v.Kind = rec.kind
			}
		}
	}
	in.r.VirtualServers = append(in.r.VirtualServers, v)
}

// inSet says whether a set holds the entry (by key).
func (in *inspection) inSet(name string, e kernel.IPSetEntry) bool {
	s := in.r.Set(name)
	return s != nil && slices.ContainsFunc(s.Entries, func(x kernel.IPSetEntry) bool { return x.Key() == e.Key() })
}

func vsEntry(vs kernel.VirtualServer) kernel.IPSetEntry {
	return ipPort(vs.Address, model.Protocol(vs.Protocol), int(vs.Port))
}

// kindFromSets is the kind of address the ipsets (which the rules act on)
// make an address virtual server; "" when none lists it.
func (in *inspection) kindFromSets(vs kernel.VirtualServer) Kind {
	e := vsEntry(vs)
	switch {
	case in.inSet(setClusterIP, e):
		return KindClusterIP
	case in.inSet(setLoadBalancer, e):
		return KindLoadBalancer
	case in.inSet(setExternalIP, e) || in.inSet(setExternalIPLocal, e):
		return KindExternalIP
	case in.inNodePortSet(vs, false):
		return KindNodePort
	}
	return ""
}

// inNodePortSet says whether the NodePort sets (the Local ones with local)
// hold the virtual server's port: by port for TCP and UDP, by address and
// port for SCTP.
func (in *inspection) inNodePortSet(vs kernel.VirtualServer, local bool) bool {
	sets := map[string][2]string{
		"TCP":  {setNodePortTCP, setNodePortLocalTCP},
		"UDP":  {setNodePortUDP, setNodePortLocalUDP},
		"SCTP": {setNodePortSCTP, setNodePortLocalSCTP},
	}[vs.Protocol]
	name := sets[0]
	if local {
		name = sets[1]
	}
	if vs.Protocol == "SCTP" {
		return in.inSet(name, vsEntry(vs))
	}
	return name != "" && in.inSet(name, kernel.IPSetEntry{Port: vs.Port})
}

// configFromRules recovers the pod CIDRs (one short-circuit rule each in
// KUBE-IPVS-FIREWALL) and masquerade-all (KUBE-SERVICES marks every
// cluster IP packet, with no pod CIDR exempted before).
func configFromRules(r *Ruleset) (cluster []netip.Prefix, masqAll bool) {
	if fw := r.Chain(tableMangle, chainFirewall); fw != nil {
		for _, rl := range fw.Rules {
			if rl.Jump == xtables.SetTarget && rl.Src.IsValid() && !rl.NotSrc {
				cluster = append(cluster, rl.Src)
			}
		}
	}
	svc := r.Chain(tableNat, chainServices)
	if svc == nil {
		return cluster, false
	}
	exempt := false
	for _, rl := range svc.Rules {
		set := rl.Set != nil && !rl.Set.Not && rl.Set.Name == setClusterIP && rl.Set.Flags == "dst,dst"
		src := rl.Src.IsValid()
		switch {
		case !set:
		case rl.Jump == xtables.Accept && src:
			exempt = true
		case rl.Jump == chainMarkMasq && !src && !exempt:
			masqAll = true
		}
	}
	return cluster, masqAll
}

// ours says a virtual server is the mode's though the name index does not
// name it: on one of its addresses or a node address, or with its mark.
func (in *inspection) ours(v *VirtualServer) bool {
	if v.FWMark != 0 {
		return ourMark(v.FWMark)
	}
	return slices.Contains(in.r.Addresses, v.Address) || slices.Contains(in.r.NodeIPs, v.Address) || in.inSet(setIPVSIPs, kernel.IPSetEntry{IP: v.Address})
}

// LB is the kernel's table: a service port per name, with the addresses
// of its virtual servers, the real servers of its first cluster IP one
// (Internal) and of its first other one (External), shares from weights.
// A virtual server of the mode that the name index does not name becomes
// a port of its own, "?/<virtual server>", so that verify reports it.
func (in *inspection) LB() *proxy.LBTable {
	t := &proxy.LBTable{Mode: Mode, Cluster: slices.Clone(in.cluster), MasqueradeAll: in.masqAll}
	byName := map[model.ServicePortName][]*VirtualServer{}
	var order []model.ServicePortName
	for i := range in.r.VirtualServers {
		v := &in.r.VirtualServers[i]
		name := v.Service
		if name == (model.ServicePortName{}) {
			if !in.ours(v) {
				continue
			}
			name = model.ServicePortName{Namespace: "?", Name: v.Key(), Protocol: model.Protocol(v.Protocol)}
		}
		if _, ok := byName[name]; !ok {
			order = append(order, name)
		}
		byName[name] = append(byName[name], v)
	}
	for _, name := range order {
		t.Services = append(t.Services, in.service(name, byName[name]))
	}
	t.Normalize()
	return t
}

func (in *inspection) service(name model.ServicePortName, vss []*VirtualServer) proxy.LBService {
	s := proxy.LBService{Name: name, Protocol: name.Protocol}
	var internal, external *VirtualServer
	var rec recordedName
	externalLocal, hasExternal := false, false
	var counters proxy.Counters
	for _, v := range vss {
		if r, ok := in.names[v.Key()]; ok {
			rec = r
		}
		if v.Flags&kernel.IPVSFlagPersistent != 0 {
			s.AffinitySeconds = int(v.Timeout)
		}
		if st, ok := in.stats[v.Key()]; ok {
			counters.Packets += st.PacketsIn + st.PacketsOut
			counters.Bytes += st.BytesIn + st.BytesOut
		}
		if v.FWMark != 0 {
			continue
		}
		s.Addresses = append(s.Addresses, proxy.LBAddress{Kind: proxy.AddrKind(v.Kind), Addr: netip.AddrPortFrom(v.Address, v.Port)})
		e := vsEntry(v.VirtualServer)
		switch v.Kind {
		case KindClusterIP:
			internal = cmp.Or(internal, v)
			s.InternalPolicyLocal = s.InternalPolicyLocal || in.inSet(setNoLocalEndpoints, e)
			continue
		case KindExternalIP:
			externalLocal = externalLocal || in.inSet(setExternalIPLocal, e)
		case KindLoadBalancer:
			externalLocal = externalLocal || in.inSet(setLoadBalancerLocal, e)
			for _, c := range in.r.Set(setLBSourceCIDR).entriesFor(e) {
				if !slices.Contains(s.SourceRanges, c.Net2) {
					s.SourceRanges = append(s.SourceRanges, c.Net2)
				}
			}
		case KindNodePort:
			externalLocal = externalLocal || in.inNodePortSet(v.VirtualServer, true)
		}
		external, hasExternal = cmp.Or(external, v), true
	}
	s.InternalPolicyLocal = s.InternalPolicyLocal || rec.internalLocal
	s.ExternalPolicyLocal = rec.externalLocal
	if hasExternal {
		s.ExternalPolicyLocal = externalLocal
	}
	if internal != nil {
		s.Internal = shares(internal.RealServers)
	}
	if external != nil {
		s.External = shares(external.RealServers)
	}
	if in.stats != nil {
		s.Counters = &counters
	}
	return s
}

// entriesFor are a hash:ip,port,* set's entries for the address and port
// of e.
func (s *Set) entriesFor(e kernel.IPSetEntry) []kernel.IPSetEntry {
	if s == nil {
		return nil
	}
	var out []kernel.IPSetEntry
	for _, x := range s.Entries {
		if x.IP == e.IP && x.Proto == e.Proto && x.Port == e.Port {
			out = append(out, x)
		}
	}
	return out
}

// shares are the real servers' shares of new connections: weight over
// the sum of weights; a draining (weight 0) one gets none.
func shares(rss []kernel.RealServer) []proxy.LBEndpoint {
	sum := 0
	for _, rs := range rss {
		sum += max(rs.Weight, 0)
	}
	out := make([]proxy.LBEndpoint, 0, len(rss))
	for _, rs := range rss {
		p := 0.0
		if rs.Weight > 0 {
			p = float64(rs.Weight) / float64(sum)
		}
		out = append(out, proxy.LBEndpoint{Addr: rs.Address, Probability: p, Weight: rs.Weight})
	}
	return out
}

// Trace is the same walker over the kernel's state.
func (in *inspection) Trace(p proxy.Packet) proxy.Result { return Trace(in.r, p) }
