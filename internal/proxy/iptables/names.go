package iptables

import (
	"crypto/sha256"
	"encoding/base32"
	"net/netip"
	"strings"

	"github.com/kdive/kdive/internal/model"
)

// Chain names, as upstream kube-proxy's iptables mode spells them.
const (
	chainServices         = "KUBE-SERVICES"
	chainExternalServices = "KUBE-EXTERNAL-SERVICES"
	chainNodePorts        = "KUBE-NODEPORTS"
	chainPostrouting      = "KUBE-POSTROUTING"
	chainMarkMasq         = "KUBE-MARK-MASQ"
	chainForward          = "KUBE-FORWARD"
	chainFirewall         = "KUBE-PROXY-FIREWALL"
	// ChainCanary is kdive's canary chain (upstream's KUBE-PROXY-CANARY):
	// it exists in mangle, nat and filter holding one rule that nothing
	// jumps to; when Sync finds the rule gone, someone flushed the table.
	ChainCanary = "KUBE-KDIVE-CANARY"

	prefixSVC = "KUBE-SVC-"
	prefixSVL = "KUBE-SVL-"
	prefixEXT = "KUBE-EXT-"
	prefixFW  = "KUBE-FW-"
	prefixSEP = "KUBE-SEP-"
)

// sharedChains are the chains every kdive node has, by table.
var sharedChains = map[Table][]string{
	TableFilter: {chainServices, chainExternalServices, chainForward, chainNodePorts, chainFirewall, ChainCanary},
	TableNAT:    {chainServices, chainNodePorts, chainPostrouting, chainMarkMasq, ChainCanary},
	TableMangle: {ChainCanary},
}

func isServiceChain(name string) bool {
	for _, p := range []string{prefixSVC, prefixSVL, prefixEXT, prefixFW, prefixSEP} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// portProtoHash is upstream's chain hash: the first 16 characters of the
// base32 sha256 of "namespace/name:port" and the lower-case protocol.
func portProtoHash(portName, proto string) string {
	h := sha256.Sum256([]byte(portName + proto))
	return base32.StdEncoding.EncodeToString(h[:])[:16]
}

// sepName is upstream's KUBE-SEP name for a port's endpoint (the hash also
// covers the endpoint "ip:port") and that "ip:port", with one allocation:
// a first render names 100,000 of them.
func (pn *portNames) sepName(ep netip.AddrPort) (chain, endpoint string) {
	var buf [128]byte
	b := append(append(buf[:0], pn.str...), pn.proto...)
	b = ep.AppendTo(b)
	h := sha256.Sum256(b)
	var enc [56]byte
	base32.StdEncoding.Encode(enc[:], h[:])
	return prefixSEP + string(enc[:16]), string(b[len(pn.str)+len(pn.proto):])
}

// portNames are a service port's chain names and comments, computed once
// per port and reused across syncs (hashing is most of a render's cost).
type portNames struct {
	name    model.ServicePortName
	str     string // "ns/svc:port"
	proto   string // "tcp"
	svc     string
	svl     string
	ext     string
	fw      string
	seps    map[netip.AddrPort]*endpointNames
	comment struct {
		clusterIP, externalIP, lbIP, noEndpoints, noLocal, firewall, healthCheck string
		masqExternal, podExternal, masqLocal, routeLocal, fwOther                string
	}
}

type endpointNames struct {
	chain   string
	comment string // "ns/svc:port -> ip:port"
}

// nameCache keeps portNames between renders.
type nameCache struct {
	ports map[model.ServicePortName]*portNames
}

func newNameCache() *nameCache {
	return &nameCache{ports: map[model.ServicePortName]*portNames{}}
}

func (c *nameCache) port(n model.ServicePortName) *portNames {
	if pn := c.ports[n]; pn != nil {
		return pn
	}
	pn := &portNames{name: n, str: n.String(), proto: strings.ToLower(string(n.Protocol))}
	h := portProtoHash(pn.str, pn.proto)
	pn.svc, pn.svl, pn.ext, pn.fw = prefixSVC+h, prefixSVL+h, prefixEXT+h, prefixFW+h
	pn.seps = map[netip.AddrPort]*endpointNames{}
	s := pn.str
	cm := &pn.comment
	cm.clusterIP = s + " cluster IP"
	cm.externalIP = s + " external IP"
	cm.lbIP = s + " loadbalancer IP"
	cm.noEndpoints = s + " has no endpoints"
	cm.noLocal = s + " has no local endpoints"
	cm.firewall = s + " traffic not accepted by " + pn.fw
	cm.healthCheck = s + " health check node port"
	cm.masqExternal = "masquerade traffic for " + s + " external destinations"
	cm.podExternal = "pod traffic for " + s + " external destinations"
	cm.masqLocal = "masquerade LOCAL traffic for " + s + " external destinations"
	cm.routeLocal = "route LOCAL traffic for " + s + " external destinations"
	cm.fwOther = "other traffic to " + s + " will be dropped by " + chainFirewall
	c.ports[n] = pn
	return pn
}

func (pn *portNames) endpoint(ep netip.AddrPort) *endpointNames {
	if en := pn.seps[ep]; en != nil {
		return en
	}
	chain, s := pn.sepName(ep)
	en := &endpointNames{chain: chain, comment: pn.str + " -> " + s}
	pn.seps[ep] = en
	return en
}

// retain drops the names of ports not in keep.
func (c *nameCache) retain(keep map[model.ServicePortName]bool) {
	for n := range c.ports {
		if !keep[n] {
			delete(c.ports, n)
		}
	}
}
