package echo

import (
	"encoding/json"
	"net"
	"net/netip"
	"os"
)

// Identity names the pod an echo server runs in. Its fields are the first
// four fields of the Reply.
type Identity struct {
	Pod       string `json:"pod"`
	Namespace string `json:"namespace"`
	Node      string `json:"node"`
	PodIP     string `json:"podIP"`
}

// Reply is the JSON object the server answers with, fields in this order:
// pod, namespace, node, podIP, client.
type Reply struct {
	Identity
	// Client is the peer address the server saw, as "IP:PORT" ("[IP]:PORT"
	// for IPv6).
	Client string `json:"client"`
}

// Downward-API environment variables read by IdentityFromEnv.
const (
	EnvPodName      = "POD_NAME"
	EnvPodNamespace = "POD_NAMESPACE"
	EnvNodeName     = "NODE_NAME"
	EnvPodIP        = "POD_IP"
)

// IdentityFromEnv reads the Identity from the environment variables a pod
// spec usually sets through the downward API (POD_NAME, POD_NAMESPACE,
// NODE_NAME, POD_IP). Unset variables leave their field empty. Callers let
// explicit flags override the result.
func IdentityFromEnv() Identity {
	return Identity{
		Pod:       os.Getenv(EnvPodName),
		Namespace: os.Getenv(EnvPodNamespace),
		Node:      os.Getenv(EnvNodeName),
		PodIP:     os.Getenv(EnvPodIP),
	}
}

// reply builds the answer for a client. local is the address the request
// arrived on; it fills PodIP when the Identity has none.
func (id Identity) reply(client string, local net.IP) Reply {
	if id.PodIP == "" {
		id.PodIP = ipString(local)
	}
	return Reply{Identity: id, Client: client}
}

// encode returns the wire form of r: its JSON and a trailing newline.
func encode(r Reply) []byte {
	b, err := json.Marshal(r)
	if err != nil {
		// Cannot happen: Reply holds only strings.
		panic("echo: encode reply: " + err.Error())
	}
	return append(b, '\n')
}

// ipString formats ip with IPv4-mapped IPv6 addresses unmapped, so that a
// dual-stack socket reports "10.0.7.3", not "::ffff:10.0.7.3". It returns ""
// for a nil or malformed ip.
func ipString(ip net.IP) string {
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return ""
	}
	return a.Unmap().String()
}
