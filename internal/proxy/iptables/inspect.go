package iptables

import (
	"cmp"
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy"
	"github.com/kdive/kdive/internal/xtables"
)

// Inspection: the kernel's side of `kdive show lb` and `kdive trace`.
// Inspect reads kdive's rules back with iptables-save (-c, for the
// counters) into a Ruleset, the same values Render produces, so that
// Trace runs unchanged over what the kernel holds rather than over what
// the agent meant. Every service chain is mapped back to its service
// port by its name: a chain's hash is upstream's hash of a
// "namespace/name:port" that the rules' comments name (KUBE-SERVICES
// keeps its comments even on large clusters), and a KUBE-SEP's also
// covers the endpoint its DNAT names. Chains whose name matches no
// comment are listed by Unmapped; Trace still follows them.

// Inspected is kdive's iptables rules as one node's kernel holds them.
type Inspected struct {
	flavour Flavour
	rs      *Ruleset
	// saved is each rule as iptables-save printed it and counts its
	// counters, by chain; for built-in chains, only kdive's jumps.
	saved    map[chainKey][]string
	counts   map[chainKey][]proxy.Counters
	unmapped []string
}

var _ proxy.Inspection = (*Inspected)(nil)

// Inspect reads kdive's iptables rules (upstream kube-proxy's chain
// names: KUBE-SERVICES, KUBE-SVC-*, KUBE-SEP-*, KUBE-EXT-*, KUBE-FW-*,
// KUBE-NODEPORTS, KUBE-POSTROUTING, ...) from the kernel of ns and
// returns them as an Inspection (an *Inspected). The flavour is the one
// holding kdive's canary chain, else the one Sync would choose. The
// node's own addresses (for --src-type LOCAL and routing) are those of
// ns's links. A rule of a shape kdive does not write, in one of its
// chains or jumping to one, is an error naming chain and rule.
func Inspect(ctx context.Context, ns *kernel.NetNS) (proxy.Inspection, error) {
	if ns == nil {
		return nil, errNoNetNS
	}
	f, out, err := saveInUse(ctx, ns.Run)
	if err != nil {
		return nil, fmt.Errorf("inspect iptables: %w", err)
	}
	links, err := ns.Links()
	if err != nil {
		return nil, fmt.Errorf("inspect iptables: %w", err)
	}
	var local []netip.Addr
	for _, l := range links {
		for _, a := range l.Addrs {
			if a.Addr().Is4() {
				local = append(local, a.Addr())
			}
		}
	}
	in, err := inspectSaved(f, out, local)
	if err != nil {
		return nil, fmt.Errorf("inspect iptables (%s): %w", f, err)
	}
	return in, nil
}

// saveInUse runs iptables-save -c of both flavours and returns the output
// of the one holding kdive's canary chain. When neither or both do, the
// flavour Sync would choose decides.
func saveInUse(ctx context.Context, run runFunc) (Flavour, string, error) {
	outs := map[Flavour]string{}
	var with []Flavour
	var errs []error
	for _, f := range xtables.Flavours {
		// Without -t: naming a legacy table would create it.
		out, err := run(ctx, "", f.Save(), "-c")
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", f.Save(), err))
			continue
		}
		outs[f] = out
		if xtables.HasChain(out, ChainCanary) {
			with = append(with, f)
		}
	}
	if len(with) == 1 {
		return with[0], outs[with[0]], nil
	}
	if len(outs) == 0 {
		return "", "", fmt.Errorf("read iptables: %w", errs[0])
	}
	f, err := detectFlavour(ctx, run)
	if err != nil {
		return "", "", err
	}
	out, ok := outs[f]
	if !ok {
		return "", "", fmt.Errorf("read iptables: %w", errs[0])
	}
	return f, out, nil
}

// inspectSaved builds the Inspected from iptables-save -c output of the
// nat and filter tables (with or without counters).
func inspectSaved(f Flavour, out string, local []netip.Addr) (*Inspected, error) {
	text, counts := savedCounters(out)
	cur := parseSave(text)
	in := &Inspected{
		flavour: f, rs: &Ruleset{LocalIPs: local},
		saved: map[chainKey][]string{}, counts: map[chainKey][]proxy.Counters{},
	}
	var chains []*Chain
	for _, t := range []Table{TableFilter, TableNAT} {
		st := cur[t]
		if st == nil {
			continue
		}
		for _, name := range st.Order {
			k := chainKey{t, name}
			own, builtin := ownedIn(t, name), builtinChains[name]
			if !own && !builtin {
				continue // someone else's chain
			}
			c := &Chain{Table: t, Name: name, Builtin: builtin}
			for i, rule := range st.Rules[name] {
				if builtin && !ownedIn(t, xtables.JumpTarget(rule)) {
					continue // not a jump into kdive's chains
				}
				r, err := parseSavedRule(rule)
				if err != nil {
					return nil, fmt.Errorf("%s chain %s, rule %d %q: unknown shape: %w", t, name, i+1, rule, err)
				}
				c.Rules = append(c.Rules, r)
				in.saved[k] = append(in.saved[k], rule)
				if i < len(counts[k]) {
					in.counts[k] = append(in.counts[k], counts[k][i])
				}
			}
			if builtin {
				if len(c.Rules) > 0 {
					in.rs.Hooks = append(in.rs.Hooks, c)
				}
				continue
			}
			chains = append(chains, c)
		}
	}
	in.mapChains(chains)
	return in, nil
}

// portNameRefs interns service port names, so that the chains and rules
// of one port share a pointer, as Render's do.
type portNameRefs map[model.ServicePortName]*model.ServicePortName

func (m portNameRefs) ref(n model.ServicePortName) *model.ServicePortName {
	if p := m[n]; p != nil {
		return p
	}
	p := &n
	m[n] = p
	return p
}

// mapChains fills each chain's and rule's service port (and endpoint)
// and sorts the chains into the Ruleset: shared ones in Top, service
// chains by port in Services, the ones no port claims in Top as well.
func (in *Inspected) mapChains(chains []*Chain) {
	refs := portNameRefs{}
	byHash := map[string]*model.ServicePortName{}
	seen := map[string]bool{}
	for _, c := range chains {
		for i := range c.Rules {
			n := commentName(c.Rules[i].Comment)
			if n == "" || seen[n] {
				continue
			}
			seen[n] = true
			for _, proto := range []string{"tcp", "udp", "sctp"} {
				if spn, ok := parsePortName(n, proto); ok {
					byHash[portProtoHash(n, proto)] = refs.ref(spn)
				}
			}
		}
	}
	nat := map[string]*Chain{}
	jumpers := map[string][]*model.ServicePortName{}
	for _, c := range chains {
		if c.Table != TableNAT {
			continue
		}
		nat[c.Name] = c
		for _, p := range []string{prefixSVC, prefixSVL, prefixEXT, prefixFW} {
			if h, ok := strings.CutPrefix(c.Name, p); ok {
				c.Service = byHash[h]
			}
		}
		if c.Service == nil {
			continue
		}
		for i := range c.Rules {
			if j := c.Rules[i].Jump; strings.HasPrefix(j, prefixSEP) {
				jumpers[j] = append(jumpers[j], c.Service)
			}
		}
	}
	for _, c := range chains {
		if strings.HasPrefix(c.Name, prefixSEP) && c.Table == TableNAT {
			c.Service = endpointService(c, jumpers[c.Name], refs)
		}
	}
	for _, c := range chains {
		in.fillRules(c, nat)
	}
	groups := map[*model.ServicePortName]*ServiceChains{}
	for _, c := range chains {
		switch {
		case c.Service != nil:
			sc := groups[c.Service]
			if sc == nil {
				sc = &ServiceChains{Name: *c.Service}
				groups[c.Service] = sc
				in.rs.Services = append(in.rs.Services, sc)
			}
			sc.Chains = append(sc.Chains, c)
		case c.Table == TableNAT && isServiceChain(c.Name):
			in.unmapped = append(in.unmapped, c.Name)
			in.rs.Top = append(in.rs.Top, c)
		default:
			in.rs.Top = append(in.rs.Top, c)
		}
	}
	slices.SortFunc(in.rs.Services, func(a, b *ServiceChains) int {
		return cmp.Or(cmp.Compare(a.Name.String(), b.Name.String()), cmp.Compare(a.Name.Protocol, b.Name.Protocol))
	})
}

// endpointService is the service port of a KUBE-SEP chain: the one among
// the ports of the chains jumping to it and the port its comments name
// whose hash with the endpoint it DNATs to is the chain's name.
func endpointService(c *Chain, jumpers []*model.ServicePortName, refs portNameRefs) *model.ServicePortName {
	var ep netip.AddrPort
	var proto string
	for i := range c.Rules {
		if r := &c.Rules[i]; r.Jump == targetDNAT {
			ep, proto = r.Endpoint, r.Proto
		}
	}
	if !ep.IsValid() || proto == "" {
		return nil
	}
	cands := slices.Clone(jumpers)
	for i := range c.Rules {
		if spn, ok := parsePortName(commentName(c.Rules[i].Comment), proto); ok {
			cands = append(cands, refs.ref(spn))
		}
	}
	for _, n := range cands {
		pn := &portNames{str: n.String(), proto: strings.ToLower(string(n.Protocol))}
		if pn.proto != proto {
			continue
		}
		if chain, _ := pn.sepName(ep); chain == c.Name {
			return n
		}
	}
	return nil
}

// fillRules sets what Render sets on rules: their service port (a service
// chain's; in shared chains, the port of the chain a rule jumps to, else
// the one its comment names) and their endpoint (a KUBE-SEP's DNAT, on
// its rules and on the jumps to it).
func (in *Inspected) fillRules(c *Chain, nat map[string]*Chain) {
	var ep netip.AddrPort
	if strings.HasPrefix(c.Name, prefixSEP) {
		ep = sepEndpoint(c)
	}
	for i := range c.Rules {
		r := &c.Rules[i]
		if c.Service != nil {
			r.Service = c.Service
		}
		if ep.IsValid() {
			r.Endpoint = ep
		}
		target := nat[r.Jump]
		if c.Table != TableNAT {
			target = nil
		}
		if target != nil && strings.HasPrefix(target.Name, prefixSEP) {
			r.Endpoint = sepEndpoint(target)
		}
		if r.Service != nil {
			continue
		}
		if target != nil && target.Service != nil {
			r.Service = target.Service
		} else if spn, ok := parsePortName(commentName(r.Comment), r.Proto); ok {
			r.Service = &spn
		}
	}
}

func sepEndpoint(c *Chain) netip.AddrPort {
	for i := range c.Rules {
		if c.Rules[i].Jump == targetDNAT {
			return c.Rules[i].Endpoint
		}
	}
	return netip.AddrPort{}
}

// commentPrefixes are the words before the port's name in the comments
// kdive writes (otherwise the name comes first).
var commentPrefixes = []string{
	"masquerade traffic for ", "pod traffic for ", "masquerade LOCAL traffic for ",
	"route LOCAL traffic for ", "other traffic to ",
}

// commentName is the "namespace/name:port" a rule's comment names, or "".
func commentName(comment string) string {
	for _, p := range commentPrefixes {
		if rest, ok := strings.CutPrefix(comment, p); ok {
			comment = rest
			break
		}
	}
	name, _, _ := strings.Cut(comment, " ")
	if !strings.Contains(name, "/") {
		return ""
	}
	return name
}

// parsePortName reads "namespace/name:port" (or "namespace/name").
func parsePortName(s, proto string) (model.ServicePortName, bool) {
	ns, rest, ok := strings.Cut(s, "/")
	name, port, _ := strings.Cut(rest, ":")
	if !ok || ns == "" || name == "" || proto == "" {
		return model.ServicePortName{}, false
	}
	return model.ServicePortName{Namespace: ns, Name: name, Port: port, Protocol: model.Protocol(strings.ToUpper(proto))}, true
}

// Flavour is the iptables the rules were read from.
func (in *Inspected) Flavour() Flavour { return in.flavour }

// Ruleset is the rules read back, as Render's values: nat and filter
// chains, the hooks in the built-in chains, and the node's addresses.
func (in *Inspected) Ruleset() *Ruleset { return in.rs }

// Unmapped lists the service chains (KUBE-SVC, KUBE-SVL, KUBE-EXT,
// KUBE-FW, KUBE-SEP) no service port could be found for.
func (in *Inspected) Unmapped() []string { return slices.Clone(in.unmapped) }

// Trace is the fate of p's first packet under the rules the kernel holds.
func (in *Inspected) Trace(p proxy.Packet) proxy.Result { return Trace(in.rs, p) }

// ruleText is rule i of c as iptables-save printed it.
func (in *Inspected) ruleText(c *Chain, i int) string {
	if s := in.saved[chainKey{c.Table, c.Name}]; i < len(s) {
		return "-A " + c.Name + " " + s[i]
	}
	return "-A " + c.Name + " " + c.Rules[i].String()
}
