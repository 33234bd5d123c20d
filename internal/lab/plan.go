package lab

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// Plan is a validated lab with every address and name decided: what Up
// builds, what status reports. It is pure data, computed without touching
// the kernel, and stored as the lab's state.
type Plan struct {
	Name        string       `json:"name"`
	Preset      string       `json:"preset,omitempty"`
	PodCIDR     netip.Prefix `json:"podCIDR"`
	BlockSize   int          `json:"blockSize"`
	ServiceCIDR netip.Prefix `json:"serviceCIDR"`
	// LoadBalancerCIDR is the pool of LoadBalancer ingress IPs.
	LoadBalancerCIDR netip.Prefix `json:"loadBalancerCIDR"`
	PodNetwork       PodNetwork   `json:"podNetwork"`
	Proxy            Proxy        `json:"proxy"`
	MTU              int          `json:"mtu"`
	Router           RouterPlan   `json:"router"`
	Subnets          []SubnetPlan `json:"subnets"`
	Nodes            []NodePlan   `json:"nodes"`
	External         HostPlan     `json:"external"`
	Objects          Objects      `json:"objects"`
	// Kubernetes is set for a Kubernetes lab (spec.kubernetes).
	Kubernetes *KubernetesPlan `json:"kubernetes,omitempty"`
}

// RouterPlan is the namespace joining the subnets.
type RouterPlan struct {
	NetNS string `json:"netns"`
}

// SubnetPlan is one L2 segment: a bridge in the router namespace that
// holds the subnet's gateway address.
type SubnetPlan struct {
	Name    string       `json:"name"`
	CIDR    netip.Prefix `json:"cidr"`
	Gateway netip.Addr   `json:"gateway"`
	Bridge  string       `json:"bridge"`
}

// HostPlan is a namespace attached to the router by eth0.
type HostPlan struct {
	Name    string       `json:"name"`
	NetNS   string       `json:"netns"`
	CIDR    netip.Prefix `json:"cidr"`
	IP      netip.Addr   `json:"ip"`
	MAC     string       `json:"mac"`
	Gateway netip.Addr   `json:"gateway"`
	// RouterPort is the router-side end of the host's eth0.
	RouterPort string `json:"routerPort"`
}

// NodePlan is one node: a host in a subnet with a pod block.
type NodePlan struct {
	HostPlan
	Subnet  string            `json:"subnet"`
	PodCIDR netip.Prefix      `json:"podCIDR"`
	Labels  map[string]string `json:"labels,omitempty"`
}

// Naming: every namespace of lab L is "kdive-L.<role>". Lab and node names
// are DNS labels, so the dot makes the split unambiguous.
const nsPrefix = "kdive-"

// NetNSPrefix is the prefix of every namespace of the named lab.
func NetNSPrefix(lab string) string { return nsPrefix + lab + "." }

// Names that nodes may not take because the lab uses them.
const (
	RouterName   = "router"
	ExternalName = "external"
)

// Defaults for fields a lab file may omit.
const (
	DefaultName         = "kdive"
	DefaultMTU          = 1500
	DefaultExternalCIDR = "198.51.100.0/24"
	DefaultLBCIDR       = "203.0.113.0/24"
	firstHostIndex      = 10 // hosts take the 10th address onwards
)

// NewPlan validates f and decides every address and name of lab name. All
// problems are reported together, each with the field path.
func NewPlan(name, preset string, f *File) (*Plan, error) {
	var errs field.ErrorList
	if msgs := validation.IsDNS1123Label(name); len(msgs) > 0 {
		errs = append(errs, field.Invalid(field.NewPath("metadata", "name"), name, "lab name: "+strings.Join(msgs, "; ")))
	} else if len(name) > 32 {
		errs = append(errs, field.TooLong(field.NewPath("metadata", "name"), name, 32))
	}
	if f.APIVersion != APIVersion {
		errs = append(errs, field.NotSupported(field.NewPath("apiVersion"), f.APIVersion, []string{APIVersion}))
	}
	if f.Kind != Kind {
		errs = append(errs, field.NotSupported(field.NewPath("kind"), f.Kind, []string{Kind}))
	}
	p := &Plan{Name: name, Preset: preset, Router: RouterPlan{NetNS: NetNSPrefix(name) + RouterName}}
	errs = append(errs, p.planSpec(&f.Spec, field.NewPath("spec"))...)
	if len(errs) > 0 {
		return nil, &InvalidError{Lab: name, Errs: errs}
	}
	return p, nil
}

// InvalidError lists every problem of a lab file, each with its field path.
type InvalidError struct {
	Lab  string
	Errs field.ErrorList
}

func (e *InvalidError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "invalid lab %q:", e.Lab)
	for _, err := range e.Errs {
		b.WriteString("\n  " + err.Error())
	}
	return b.String()
}

// Unwrap gives the individual field errors to errors.Is/As.
func (e *InvalidError) Unwrap() []error {
	out := make([]error, len(e.Errs))
	for i, err := range e.Errs {
		out[i] = err
	}
	return out
}

// ranges tracks the address ranges decided so far, to reject overlaps.
type ranges []struct {
	path *field.Path
	cidr netip.Prefix
}

func (r *ranges) add(path *field.Path, c netip.Prefix) *field.Error {
	for _, o := range *r {
		if o.cidr.Overlaps(c) {
			return field.Invalid(path, c.String(), fmt.Sprintf("overlaps %s (%s)", o.path, o.cidr))
		}
	}
	*r = append(*r, struct {
		path *field.Path
		cidr netip.Prefix
	}{path, c})
	return nil
}

func (p *Plan) planSpec(s *Spec, fp *field.Path) field.ErrorList {
	var errs field.ErrorList
	var used ranges
	addRange := func(path *field.Path, c netip.Prefix) {
		if e := used.add(path, c); e != nil {
			errs = append(errs, e)
		}
	}
	var ok bool
	if p.PodCIDR, ok = parseCIDR(s.PodCIDR, fp.Child("podCIDR"), &errs); ok {
		addRange(fp.Child("podCIDR"), p.PodCIDR)
	}
	if p.ServiceCIDR, ok = parseCIDR(s.ServiceCIDR, fp.Child("serviceCIDR"), &errs); ok {
		addRange(fp.Child("serviceCIDR"), p.ServiceCIDR)
	}
	lb := s.LoadBalancerCIDR
	if lb == "" {
		lb = DefaultLBCIDR
	}
	if p.LoadBalancerCIDR, ok = parseCIDR(lb, fp.Child("loadBalancerCIDR"), &errs); ok {
		addRange(fp.Child("loadBalancerCIDR"), p.LoadBalancerCIDR)
	}
	p.BlockSize = s.BlockSize
	if p.PodCIDR.IsValid() && (s.BlockSize < p.PodCIDR.Bits() || s.BlockSize > 30) {
		errs = append(errs, field.Invalid(fp.Child("blockSize"), s.BlockSize,
			fmt.Sprintf("must be a prefix length between the pod CIDR's (%d) and 30", p.PodCIDR.Bits())))
	}
	p.PodNetwork = s.PodNetwork
	oneOf(&errs, fp.Child("podNetwork", "interface"), s.PodNetwork.Interface, Interfaces)
	oneOf(&errs, fp.Child("podNetwork", "encap"), s.PodNetwork.Encap, Encaps)
	oneOf(&errs, fp.Child("podNetwork", "encapPolicy"), s.PodNetwork.EncapPolicy, EncapPolicies)
	p.Proxy = s.Proxy
	oneOf(&errs, fp.Child("proxy", "mode"), s.Proxy.Mode, ProxyModes)
	if s.Proxy.IPVSScheduler != "" {
		oneOf(&errs, fp.Child("proxy", "ipvsScheduler"), s.Proxy.IPVSScheduler, IPVSSchedulers)
	} else if s.Proxy.Mode == "ipvs" {
		p.Proxy.IPVSScheduler = "rr"
	}
	p.MTU = s.MTU
	if p.MTU == 0 {
		p.MTU = DefaultMTU
	}
	if p.MTU < 1280 || p.MTU > 9000 {
		errs = append(errs, field.Invalid(fp.Child("mtu"), s.MTU, "must be between 1280 and 9000"))
	}
	errs = append(errs, p.planSubnets(s.Subnets, fp.Child("subnets"), addRange)...)
	errs = append(errs, p.planExternal(s.External, fp.Child("external"), addRange)...)
	if s.Kubernetes != nil {
		p.Kubernetes = &KubernetesPlan{Version: s.Kubernetes.Version}
	}
	if s.PodNetwork.Interface == InterfaceNone && p.Kubernetes == nil {
		errs = append(errs, field.Invalid(fp.Child("podNetwork", "interface"), s.PodNetwork.Interface,
			"none needs spec.kubernetes (lab up --kubernetes): only a Kubernetes lab has another CNI to attach pods"))
	}
	errs = append(errs, p.planNodes(s.Nodes, fp.Child("nodes"))...)
	if p.Kubernetes != nil {
		errs = append(errs, p.planKubernetes(s.Kubernetes, fp.Child("kubernetes"))...)
	}
	if len(errs) == 0 {
		var objErrs field.ErrorList
		p.Objects, objErrs = planObjects(s.Objects, p, fp.Child("objects"))
		errs = append(errs, objErrs...)
	}
	return errs
}

func (p *Plan) planSubnets(subnets []Subnet, fp *field.Path, addRange func(*field.Path, netip.Prefix)) field.ErrorList {
	var errs field.ErrorList
	if len(subnets) == 0 {
		errs = append(errs, field.Required(fp, "a lab needs at least one subnet"))
	}
	seen := map[string]bool{}
	for i, s := range subnets {
		ip := fp.Index(i)
		dnsLabel(&errs, ip.Child("name"), s.Name)
		if seen[s.Name] {
			errs = append(errs, field.Duplicate(ip.Child("name"), s.Name))
		}
		seen[s.Name] = true
		c, ok := parseCIDR(s.CIDR, ip.Child("cidr"), &errs)
		if !ok {
			continue
		}
		if c.Bits() > 29 {
			errs = append(errs, field.Invalid(ip.Child("cidr"), s.CIDR, "a subnet needs room for a gateway and nodes: at most /29"))
			continue
		}
		addRange(ip.Child("cidr"), c)
		p.Subnets = append(p.Subnets, SubnetPlan{
			Name: s.Name, CIDR: c, Gateway: c.Addr().Next(), Bridge: fmt.Sprintf("br%d", i),
		})
	}
	return errs
}

func (p *Plan) planExternal(e External, fp *field.Path, addRange func(*field.Path, netip.Prefix)) field.ErrorList {
	var errs field.ErrorList
	cidr := e.CIDR
	if cidr == "" {
		cidr = DefaultExternalCIDR
	}
	c, ok := parseCIDR(cidr, fp.Child("cidr"), &errs)
	if !ok {
		return errs
	}
	if c.Bits() > 29 {
		return append(errs, field.Invalid(fp.Child("cidr"), cidr, "at most /29"))
	}
	addRange(fp.Child("cidr"), c)
	ip, ok := hostIP(e.IP, c, 0, fp.Child("ip"), &errs)
	if !ok {
		return errs
	}
	p.External = HostPlan{
		Name: ExternalName, NetNS: NetNSPrefix(p.Name) + ExternalName, CIDR: c, IP: ip,
		MAC: macFor(ip), Gateway: c.Addr().Next(), RouterPort: "ext0",
	}
	return errs
}

func (p *Plan) planNodes(nodes []Node, fp *field.Path) field.ErrorList {
	var errs field.ErrorList
	if len(nodes) == 0 {
		errs = append(errs, field.Required(fp, "a lab needs at least one node"))
	}
	subnets := map[string]SubnetPlan{}
	var subnetNames []string
	for _, s := range p.Subnets {
		subnets[s.Name] = s
		subnetNames = append(subnetNames, s.Name)
	}
	seenName := map[string]bool{}
	seenIP := map[netip.Addr]string{}
	perSubnet := map[string]int{}
	blocks := p.podBlocks(len(nodes))
	if p.PodCIDR.IsValid() && blocks == nil && len(nodes) > 0 {
		errs = append(errs, field.Invalid(field.NewPath("spec", "podCIDR"), p.PodCIDR.String(),
			fmt.Sprintf("has too few /%d blocks for %d nodes (block 0 is left unused)", p.BlockSize, len(nodes))))
	}
	for i, n := range nodes {
		ip := fp.Index(i)
		dnsLabel(&errs, ip.Child("name"), n.Name)
		if n.Name == RouterName || n.Name == ExternalName {
			errs = append(errs, field.Invalid(ip.Child("name"), n.Name, "is reserved for the lab's own namespaces"))
		}
		if seenName[n.Name] {
			errs = append(errs, field.Duplicate(ip.Child("name"), n.Name))
		}
		seenName[n.Name] = true
		for k, v := range n.Labels {
			for _, m := range validation.IsQualifiedName(k) {
				errs = append(errs, field.Invalid(ip.Child("labels").Key(k), k, m))
			}
			for _, m := range validation.IsValidLabelValue(v) {
				errs = append(errs, field.Invalid(ip.Child("labels").Key(k), v, m))
			}
		}
		sn, ok := subnets[n.Subnet]
		if !ok {
			errs = append(errs, field.NotFound(ip.Child("subnet"), n.Subnet))
			if len(subnetNames) > 0 {
				errs[len(errs)-1].Detail = "no such subnet; subnets are " + strings.Join(subnetNames, ", ")
			}
			continue
		}
		addr, ok := hostIP(n.IP, sn.CIDR, perSubnet[n.Subnet], ip.Child("ip"), &errs)
		perSubnet[n.Subnet]++
		if !ok {
			continue
		}
		if other, dup := seenIP[addr]; dup {
			errs = append(errs, field.Duplicate(ip.Child("ip"), fmt.Sprintf("%s (also node %s)", addr, other)))
			continue
		}
		seenIP[addr] = n.Name
		np := NodePlan{
			HostPlan: HostPlan{
				Name: n.Name, NetNS: NetNSPrefix(p.Name) + n.Name, CIDR: sn.CIDR, IP: addr,
				MAC: macFor(addr), Gateway: sn.Gateway, RouterPort: fmt.Sprintf("nd%d", i),
			},
			Subnet: n.Subnet, Labels: n.Labels,
		}
		if blocks != nil {
			np.PodCIDR = blocks[i]
		}
		p.Nodes = append(p.Nodes, np)
	}
	return errs
}

// podBlocks cuts the pod CIDR into count blocks of BlockSize, skipping
// block 0 so that in the presets node-N owns 10.0.N.0/24. It returns nil
// when there is no room. In a Kubernetes lab they are what
// kube-controller-manager's range allocator usually hands out as the nodes
// register one after another, from block 0 on; up replaces them with the
// blocks the nodes really got.
func (p *Plan) podBlocks(count int) []netip.Prefix {
	if !p.PodCIDR.IsValid() || p.BlockSize < p.PodCIDR.Bits() || p.BlockSize > 30 {
		return nil
	}
	first := uint32(1)
	if p.Kubernetes != nil {
		first = 0
	}
	avail := uint64(1) << uint(p.BlockSize-p.PodCIDR.Bits())
	if uint64(count)+uint64(first) > avail {
		return nil
	}
	base := ipToUint(p.PodCIDR.Addr())
	size := uint32(1) << uint(32-p.BlockSize)
	out := make([]netip.Prefix, count)
	for i := range out {
		out[i] = netip.PrefixFrom(uintToIP(base+(uint32(i)+first)*size), p.BlockSize)
	}
	return out
}

// hostIP returns the given address after checking it is a usable host of
// c, or the default: c's (firstHostIndex+n)th address.
func hostIP(given string, c netip.Prefix, n int, fp *field.Path, errs *field.ErrorList) (netip.Addr, bool) {
	last := lastAddr(c)
	if given == "" {
		a := uintToIP(ipToUint(c.Addr()) + uint32(firstHostIndex+n))
		if !c.Contains(a) || a == last {
			*errs = append(*errs, field.Invalid(fp, given, fmt.Sprintf("%s has no free address left for this host", c)))
			return netip.Addr{}, false
		}
		return a, true
	}
	a, err := netip.ParseAddr(given)
	if err != nil || !a.Is4() {
		*errs = append(*errs, field.Invalid(fp, given, "must be an IPv4 address"))
		return netip.Addr{}, false
	}
	switch {
	case !c.Contains(a):
		*errs = append(*errs, field.Invalid(fp, given, fmt.Sprintf("is outside its subnet %s", c)))
	case a == c.Addr() || a == last:
		*errs = append(*errs, field.Invalid(fp, given, fmt.Sprintf("is the network or broadcast address of %s", c)))
	case a == c.Addr().Next():
		*errs = append(*errs, field.Invalid(fp, given, fmt.Sprintf("is the router's gateway address of %s", c)))
	default:
		return a, true
	}
	return netip.Addr{}, false
}

func parseCIDR(s string, fp *field.Path, errs *field.ErrorList) (netip.Prefix, bool) {
	if s == "" {
		*errs = append(*errs, field.Required(fp, "an IPv4 CIDR such as 10.0.0.0/16"))
		return netip.Prefix{}, false
	}
	c, err := netip.ParsePrefix(s)
	if err != nil || !c.Addr().Is4() {
		*errs = append(*errs, field.Invalid(fp, s, "must be an IPv4 CIDR such as 10.0.0.0/16"))
		return netip.Prefix{}, false
	}
	if c.Masked() != c {
		*errs = append(*errs, field.Invalid(fp, s, fmt.Sprintf("has host bits set; did you mean %s?", c.Masked())))
		return netip.Prefix{}, false
	}
	return c, true
}

func oneOf(errs *field.ErrorList, fp *field.Path, v string, allowed []string) {
	if !slices.Contains(allowed, v) {
		if v == "" {
			*errs = append(*errs, field.Required(fp, "one of "+strings.Join(allowed, ", ")))
			return
		}
		*errs = append(*errs, field.NotSupported(fp, v, allowed))
	}
}

func dnsLabel(errs *field.ErrorList, fp *field.Path, v string) {
	if v == "" {
		*errs = append(*errs, field.Required(fp, ""))
		return
	}
	for _, m := range validation.IsDNS1123Label(v) {
		*errs = append(*errs, field.Invalid(fp, v, m))
	}
}

// macFor gives a host a stable, locally administered MAC derived from its
// address, so the router's source check can pin address to host.
func macFor(a netip.Addr) string {
	b := a.As4()
	return net.HardwareAddr{0x02, 0x6b, b[0], b[1], b[2], b[3]}.String()
}

func ipToUint(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func uintToIP(u uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(u >> 24), byte(u >> 16), byte(u >> 8), byte(u)})
}

func lastAddr(c netip.Prefix) netip.Addr {
	return uintToIP(ipToUint(c.Addr()) | (1<<uint(32-c.Bits()) - 1))
}

// Node returns the planned node with that name.
func (p *Plan) Node(name string) (NodePlan, bool) {
	for _, n := range p.Nodes {
		if n.Name == name {
			return n, true
		}
	}
	return NodePlan{}, false
}
