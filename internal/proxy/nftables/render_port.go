package nftables

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy"
)

// portBuilder renders one service port into the ruleset: elements in the
// shared maps, uses of the shared per-endpoint-count chains, and the few
// chains of its own that rare features need.
type portBuilder struct {
	rs  *Ruleset
	rec *recorder
	f   *fragment
	p   *proxy.Port
	id  string // ns/name/proto/port, for names of the port's own objects
}

// target is where a packet goes to be load-balanced over one endpoint set.
type target struct {
	verdict Verdict
	ok      bool // false: no endpoints, verdict is drop or reject
	n       int
	local   bool
}

func (b *portBuilder) build() {
	p := b.p
	var clusterKeys, extKeys, lbKeys []ElemKey
	for _, ip := range p.ClusterIPs {
		clusterKeys = b.appendKey(clusterKeys, ip, p.Port)
	}
	if len(clusterKeys) == 0 {
		return // headless, or no IPv4 cluster IP: nothing to proxy
	}
	for _, ip := range p.ExternalIPs {
		extKeys = b.appendKey(extKeys, ip, p.Port)
	}
	for _, ip := range p.LoadBalancerIPs {
		lbKeys = b.appendKey(lbKeys, ip, p.Port)
	}
	extKeys = append(extKeys, lbKeys...)
	if p.NodePort != 0 {
		for _, ip := range b.rs.glob.nodePortIPs {
			extKeys = b.appendKey(extKeys, ip, p.NodePort)
		}
	}

	v := b.clusterIPVerdict(clusterKeys)
	for _, k := range clusterKeys {
		b.claim(setServiceIPs, Element{Key: k, Verdict: v})
	}
	if len(extKeys) > 0 {
		v := b.externalVerdict(extKeys)
		for _, k := range extKeys {
			b.claim(setServiceIPs, Element{Key: k, Verdict: v})
		}
	}
	if ranges := v4Prefixes(p.LoadBalancerSourceRanges); len(ranges) > 0 && len(lbKeys) > 0 {
		fw := b.ownChain(&Chain{Name: "firewall-" + b.id, Rules: []Rule{
			{Match: []Match{SaddrInPrefixes{Prefixes: ranges, Not: true}}, Stmt: Verdict{Kind: Drop}},
		}})
		for _, k := range lbKeys {
			b.claim(setFirewallIPs, Element{Key: k, Verdict: Verdict{Kind: Jump, Chain: fw}})
		}
	}
}

func (b *portBuilder) appendKey(keys []ElemKey, ip netip.Addr, port int) []ElemKey {
	if !ip.Is4() {
		return keys
	}
	k := ElemKey{Addr: ip, Proto: b.p.Name.Protocol, Port: uint16(port)}
	if slices.Contains(keys, k) {
		return keys
	}
	return append(keys, k)
}

// clusterIPVerdict: cluster-IP traffic uses the internal endpoints and is
// masqueraded as cluster-ip-masquerade decides.
func (b *portBuilder) clusterIPVerdict(keys []ElemKey) Verdict {
	t := b.target(b.p.InternalEndpoints(), b.p.InternalPolicyLocal, keys)
	if !t.ok {
		return t.verdict
	}
	masq := Rule{Stmt: Verdict{Kind: Jump, Chain: chainClusterIPMasq}}
	if b.p.AffinityTimeout > 0 {
		return gotoChain(b.ownChain(&Chain{Name: "service-" + b.id, Rules: []Rule{masq, {Stmt: t.verdict}}}))
	}
	name := sharedName("cluster-ip-", t.n)
	if t.local {
		name = sharedName("cluster-ip-local-", t.n)
	}
	b.useShared(name, func() *Chain { return &Chain{Name: name, Rules: []Rule{masq, {Stmt: t.verdict}}} }, nil)
	return gotoChain(name)
}

// externalVerdict: traffic to NodePorts, external IPs and LoadBalancer
// IPs. Policy Cluster masquerades it and uses the cluster endpoints;
// policy Local keeps the client's address and uses this node's endpoints,
// except for traffic from pods (short-circuited to the internal endpoints,
// unmasqueraded) and from the node (internal endpoints, masqueraded).
func (b *portBuilder) externalVerdict(keys []ElemKey) Verdict {
	p := b.p
	markMasq := Rule{Stmt: Verdict{Kind: Jump, Chain: chainMarkMasq}}
	if !p.ExternalPolicyLocal {
		t := b.target(p.Cluster, false, keys)
		if !t.ok {
			return t.verdict
		}
		if p.AffinityTimeout > 0 {
			return gotoChain(b.ownChain(&Chain{Name: "external-" + b.id, Rules: []Rule{markMasq, {Stmt: t.verdict}}}))
		}
		name := sharedName("external-", t.n)
		b.useShared(name, func() *Chain { return &Chain{Name: name, Rules: []Rule{markMasq, {Stmt: t.verdict}}} }, nil)
		return gotoChain(name)
	}
	internal := b.target(p.InternalEndpoints(), p.InternalPolicyLocal, keys)
	local := b.target(p.Local, true, keys)
	var rules []Rule
	if len(b.rs.glob.cidrs) > 0 {
		rules = append(rules, Rule{Match: []Match{SaddrInSet{Set: setClusterCIDRs}}, Stmt: internal.verdict})
	}
	rules = append(rules,
		Rule{Match: []Match{FibSaddrLocal{}}, Stmt: markMasq.Stmt},
		Rule{Match: []Match{FibSaddrLocal{}}, Stmt: internal.verdict},
		Rule{Stmt: local.verdict})
	return gotoChain(b.ownChain(&Chain{Name: "external-" + b.id, Rules: rules}))
}

// target makes eps reachable for packets to keys and says how to get
// there: a shared endpoints-N chain whose one rule picks a bucket of the
// shared map endpoints-N, or (with session affinity) the port's own
// affinity chain. Without endpoints: REJECT when the port has none
// anywhere, else DROP.
func (b *portBuilder) target(eps []model.Endpoint, local bool, keys []ElemKey) target {
	notV4 := func(e model.Endpoint) bool { return !e.IP.Is4() }
	if slices.ContainsFunc(eps, notV4) {
		eps = slices.DeleteFunc(slices.Clone(eps), notV4)
	}
	if len(eps) == 0 {
		if b.p.HasEndpoints {
			return target{verdict: Verdict{Kind: Drop}}
		}
		return target{verdict: gotoChain(chainReject)}
	}
	for _, e := range eps {
		if e.NodeName == b.rs.glob.node || e.NodeName == "" {
			b.claim(setHairpin, Element{Key: ElemKey{Addr: e.IP, Addr2: e.IP}})
		}
	}
	t := target{ok: true, n: len(eps), local: local}
	if b.p.AffinityTimeout > 0 {
		t.verdict = gotoChain(b.affinityChain(eps, local))
		return t
	}
	name := sharedName("endpoints-", len(eps))
	if local {
		name = sharedName("local-endpoints-", len(eps))
	}
	n := len(eps)
	b.useShared(name,
		func() *Chain { return &Chain{Name: name, Rules: []Rule{{Stmt: DNATMap{Map: name, N: n}}}} },
		func() *Set { return &Set{Name: name, Kind: EndpointBuckets} })
	for _, k := range keys {
		for i, e := range eps {
			k.Bucket = uint16(i)
			b.claim(name, Element{Key: k, Endpoint: e.AddrPort()})
		}
	}
	t.verdict = gotoChain(name)
	return t
}

// affinityChain is upstream's session affinity: a set of recent clients
// per endpoint, checked first; new clients pick an endpoint at random and
// are added to its set.
func (b *portBuilder) affinityChain(eps []model.Endpoint, local bool) string {
	name := "affinity-" + b.id
	if local {
		name = "local-affinity-" + b.id
	}
	var sticky []Rule
	var chains []string
	for _, e := range eps {
		ep := e.AddrPort()
		suffix := "__" + ep.Addr().String() + "/" + strconv.Itoa(int(ep.Port()))
		clients := b.ownSet(&Set{Name: "affinity-" + b.id + suffix, Kind: Clients, Timeout: b.p.AffinityTimeout, Endpoint: ep})
		epChain := b.ownChain(&Chain{Name: "endpoint-" + b.id + suffix, Endpoint: ep, Rules: []Rule{
			{Stmt: UpdateSaddr{Set: clients}},
			{Match: []Match{L4Proto{b.p.Name.Protocol}}, Stmt: DNAT{To: ep}},
		}})
		sticky = append(sticky, Rule{Match: []Match{SaddrInSet{Set: clients}}, Stmt: gotoChain(epChain)})
		chains = append(chains, epChain)
	}
	pick := Rule{Stmt: gotoChain(chains[0])}
	if len(chains) > 1 {
		pick = Rule{Stmt: NumgenVMap{Chains: chains}}
	}
	return b.ownChain(&Chain{Name: name, Rules: append(sticky, pick)})
}

// sharedName is prefix + n, for the shared per-endpoint-count objects
// (remembered: every port asks for them).
func sharedName(prefix string, n int) string {
	k := sharedKey{prefix, n}
	if s, ok := sharedNames.Load(k); ok {
		return s.(string)
	}
	s := prefix + strconv.Itoa(n)
	sharedNames.Store(k, s)
	return s
}

type sharedKey struct {
	prefix string
	n      int
}

var sharedNames sync.Map

func gotoChain(name string) Verdict { return Verdict{Kind: Goto, Chain: name} }

func (b *portBuilder) claim(set string, e Element) {
	rs, owner := b.rs, &b.f.name
	if set != setHairpin {
		e.Service = *owner
	}
	s, k := rs.Sets[set], e.Key.m()
	sl := s.elems[k]
	if sl != nil && sl.has(owner) {
		return
	}
	b.rec.touchElem(rs, set, k)
	if sl == nil {
		s.elems[k] = &slot{key: k, first: claim{owner: owner, elem: e}}
	} else {
		sl.add(claim{owner: owner, elem: e})
	}
	b.f.claims = append(b.f.claims, elemRef{set: set, key: k})
}

// ownChain adds a chain of this port (once) and returns its name.
func (b *portBuilder) ownChain(c *Chain) string {
	if slices.Contains(b.f.chains, c.Name) || b.rs.Chains[c.Name] != nil {
		return c.Name
	}
	b.rec.touchChain(b.rs, c.Name)
	c.Service = b.p.Name
	b.rs.Chains[c.Name] = c
	b.f.chains = append(b.f.chains, c.Name)
	return c.Name
}

func (b *portBuilder) ownSet(s *Set) string {
	if slices.Contains(b.f.sets, s.Name) || b.rs.Sets[s.Name] != nil {
		return s.Name
	}
	b.rec.touchSet(b.rs, s.Name)
	s.Service = b.p.Name
	s.elems = map[mkey]*slot{}
	b.rs.Sets[s.Name] = s
	b.f.sets = append(b.f.sets, s.Name)
	return s.Name
}

// useShared takes one use of a shared chain (and map of the same name),
// creating them for the first user.
func (b *portBuilder) useShared(name string, chain func() *Chain, set func() *Set) {
	if slices.Contains(b.f.shared, name) {
		return
	}
	b.f.shared = append(b.f.shared, name)
	rs := b.rs
	if c := rs.Chains[name]; c != nil {
		c.refs++
	} else {
		b.rec.touchChain(rs, name)
		c = chain()
		c.refs = 1
		rs.Chains[name] = c
	}
	if set == nil {
		return
	}
	if s := rs.Sets[name]; s != nil {
		s.refs++
	} else {
		b.rec.touchSet(rs, name)
		s = set()
		s.elems, s.refs = make(map[mkey]*slot, rs.hints[name]), 1
		rs.Sets[name] = s
	}
}

func v4Prefixes(in []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range in {
		if p.Addr().Is4() && !slices.Contains(out, p.Masked()) {
			out = append(out, p.Masked())
		}
	}
	return out
}

// maxID keeps names of a port's objects (prefix + id + endpoint suffix)
// under the kernel's 256-byte limit.
const maxID = 160

// portID names a service port in its objects' names:
// "namespace/name/protocol/port", the port's name or, for an unnamed
// port, its number. Overlong ids are cut and made unique with a hash.
func portID(sp model.ServicePort) string {
	port := sp.Name.Port
	if port == "" {
		port = strconv.Itoa(sp.Port)
	}
	id := fmt.Sprintf("%s/%s/%s/%s", sp.Name.Namespace, sp.Name.Name, proto(sp.Name.Protocol), port)
	if len(id) <= maxID && validName(id) {
		return id
	}
	sum := shortHash(id)
	clean := strings.Map(func(r rune) rune {
		if validNameRune(r) {
			return r
		}
		return '_'
	}, id)
	return clean[:min(len(clean), maxID-len(sum)-1)] + "-" + sum
}

func validName(s string) bool {
	for _, r := range s {
		if !validNameRune(r) {
			return false
		}
	}
	return true
}

// validNameRune: what nft accepts in an unquoted identifier after its
// first letter.
func validNameRune(r rune) bool {
	return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("/-_.", r)
}

// svcName is a port's name, or "" for shared objects.
func svcName(n model.ServicePortName) string {
	if n == (model.ServicePortName{}) {
		return ""
	}
	return n.String()
}
