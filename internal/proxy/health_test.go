package proxy_test

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/ktest"
	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy"
	"github.com/kdive/kdive/internal/proxy/proxytest"
)

func TestHealthServer(t *testing.T) {
	// Listen on loopback port 0 and remember where, instead of the real
	// health check port.
	addrs := map[string]string{}
	hs := &proxy.HealthServer{Listen: func(network, addr string) (net.Listener, error) {
		ln, err := net.Listen(network, "127.0.0.1:0")
		if err == nil {
			addrs[addr] = ln.Addr().String()
		}
		return ln, err
	}}
	defer hs.Close()
	d := proxytest.Fixture() // default/local: eTP Local, health check port 32000, one local endpoint
	if err := hs.Sync(d); err != nil {
		t.Fatal(err)
	}
	get := func() (int, map[string]any) {
		c := http.Client{Timeout: 2 * time.Second}
		resp, err := c.Get("http://" + addrs["0.0.0.0:32000"] + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var body map[string]any
		if err := json.Unmarshal(b, &body); err != nil {
			t.Fatalf("body %q: %v", b, err)
		}
		return resp.StatusCode, body
	}
	code, body := get()
	svc, _ := body["service"].(map[string]any)
	if code != 200 || svc["namespace"] != "default" || svc["name"] != "local" || body["localEndpoints"] != 1.0 {
		t.Errorf("with a local endpoint: %d %v", code, body)
	}
	// Only a terminating (still serving) local endpoint: traffic still
	// goes to it, but the health check fails so the load balancer drains
	// the node (upstream's "should fail health check node port if there
	// are only terminating endpoints").
	for _, p := range d.Services {
		if p.Name.Name == "local" {
			for i := range p.Local {
				p.Local[i].Ready, p.Local[i].Terminating = false, true
			}
		}
	}
	if err := hs.Sync(d); err != nil {
		t.Fatal(err)
	}
	if code, body = get(); code != 503 || body["localEndpoints"] != 0.0 {
		t.Errorf("with only a terminating local endpoint: %d %v", code, body)
	}
	for _, p := range d.Services {
		if p.Name.Name == "local" {
			p.Local = nil
		}
	}
	if err := hs.Sync(d); err != nil {
		t.Fatal(err)
	}
	if code, body = get(); code != 503 || body["localEndpoints"] != 0.0 {
		t.Errorf("without local endpoints: %d %v", code, body)
	}
	d.Services = nil
	if err := hs.Sync(d); err != nil {
		t.Fatal(err)
	}
	if _, err := net.DialTimeout("tcp", addrs["0.0.0.0:32000"], time.Second); err == nil {
		t.Error("the health check port is still open after its service went")
	}
}

// TestHealthServerAddresses runs real listeners in a namespace whose
// loopback holds the node's addresses: 192.0.2.10-12 (inside
// nodePortAddresses 192.0.2.0/24; .12 only once added) and 198.51.100.10
// (outside).
func TestHealthServerAddresses(t *testing.T) {
	ns := ktest.NewNetNS(t)
	for _, a := range []string{"192.0.2.10/32", "192.0.2.11/32", "198.51.100.10/32"} {
		if err := ns.AddAddr("lo", netip.MustParsePrefix(a)); err != nil {
			t.Fatal(err)
		}
	}
	opened := map[string]int{} // listeners opened, by address
	hs := &proxy.HealthServer{Listen: func(network, addr string) (net.Listener, error) {
		var ln net.Listener
		err := ns.Do(func() (err error) { ln, err = net.Listen(network, addr); return err })
		if err == nil {
			opened[addr]++
		}
		return ln, err
	}}
	defer hs.Close()
	d := proxytest.Fixture() // default/local: eTP Local, health check port 32000
	d.Config.NodePortAddresses = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}
	sync := func(ips ...string) error {
		d.Node.IPs = nil
		for _, ip := range ips {
			d.Node.IPs = append(d.Node.IPs, netip.MustParseAddr(ip))
		}
		return hs.Sync(d)
	}
	answers := func(ip string) bool {
		c := http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: ns.DialContext}}
		resp, err := c.Get("http://" + ip + ":32000/")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	}
	want := func(step string, yes, no []string) {
		t.Helper()
		for _, ip := range yes {
			if !answers(ip) {
				t.Errorf("%s: the health check port does not answer on %s", step, ip)
			}
		}
		for _, ip := range no {
			if answers(ip) {
				t.Errorf("%s: the health check port answers on %s", step, ip)
			}
		}
	}

	if err := sync("192.0.2.10"); err != nil {
		t.Fatal(err)
	}
	want("nodePortAddresses", []string{"192.0.2.10"}, []string{"192.0.2.11", "198.51.100.10", "127.0.0.1"})

	if err := sync("192.0.2.10", "192.0.2.11", "198.51.100.10"); err != nil {
		t.Fatal(err)
	}
	want("a node IP appears", []string{"192.0.2.10", "192.0.2.11"}, []string{"198.51.100.10", "127.0.0.1"})
	if n := opened["192.0.2.10:32000"]; n != 1 {
		t.Errorf("the listener on 192.0.2.10 was opened %d times; want once (kept across syncs)", n)
	}

	if err := sync("192.0.2.11"); err != nil {
		t.Fatal(err)
	}
	want("a node IP goes", []string{"192.0.2.11"}, []string{"192.0.2.10"})

	// 192.0.2.12 is not on the node yet: its listener fails, the
	// other keeps serving, and the next sync retries.
	err := sync("192.0.2.11", "192.0.2.12")
	if err == nil || !strings.Contains(err.Error(), "192.0.2.12:32000") || !strings.Contains(err.Error(), "default/local") {
		t.Errorf("sync with an address the node lacks: %v; want an error naming 192.0.2.12:32000 and the service", err)
	}
	want("one address fails", []string{"192.0.2.11"}, nil)
	if err := ns.AddAddr("lo", netip.MustParsePrefix("192.0.2.12/32")); err != nil {
		t.Fatal(err)
	}
	if err := sync("192.0.2.11", "192.0.2.12"); err != nil {
		t.Errorf("retry once the address exists: %v", err)
	}
	want("retried", []string{"192.0.2.11", "192.0.2.12"}, nil)

	// Without nodePortAddresses: every address, as kube-proxy.
	d.Config.NodePortAddresses = nil
	if err := sync("192.0.2.10"); err != nil {
		t.Fatal(err)
	}
	want("no nodePortAddresses", []string{"192.0.2.10", "192.0.2.11", "198.51.100.10", "127.0.0.1"}, nil)

	// And back: the wildcard listener closes before the node IP's opens.
	d.Config.NodePortAddresses = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}
	if err := sync("192.0.2.10"); err != nil {
		t.Fatal(err)
	}
	want("nodePortAddresses again", []string{"192.0.2.10"}, []string{"192.0.2.11", "198.51.100.10", "127.0.0.1"})

	d.Services = nil
	if err := hs.Sync(d); err != nil {
		t.Fatal(err)
	}
	want("service gone", nil, []string{"192.0.2.10"})
}

func TestStaleConntrack(t *testing.T) {
	prev := proxytest.Fixture()
	next := proxytest.Fixture()
	var dns *proxy.Port
	for _, p := range next.Services {
		if p.Name.String() == "kube-system/kube-dns:dns" {
			dns = p
		}
	}
	// The UDP endpoint 10.0.2.3 goes; the TCP port's endpoints do not count.
	dns.Cluster = dns.Cluster[:1]
	got := proxy.StaleConntrack(prev, next)
	want := kernel.ConntrackFilter{Protocol: unix.IPPROTO_UDP, OrigDst: netip.MustParseAddr("10.1.0.10"), OrigDstPort: 53, ReplySrc: netip.MustParseAddr("10.0.2.3"), ReplySrcPort: uint16(prevEndpoint(prev, "10.0.2.3").Port)}
	if len(got) != 1 || got[0] != want {
		t.Errorf("stale after removing an endpoint = %v, want [%v]", got, want)
	}
	// The same endpoint on another port (the Service's targetPort
	// changed): the flows to the old port go, as upstream's "cleanup
	// conntrack entries when UDP service target port changes" wants.
	moved := proxytest.Fixture()
	for _, p := range moved.Services {
		if p.Name.String() == "kube-system/kube-dns:dns" {
			for i := range p.Cluster {
				p.Cluster[i].Port += 1000
			}
		}
	}
	got = proxy.StaleConntrack(prev, moved)
	if len(got) != 2 {
		t.Errorf("stale after the target port changed = %v, want both old endpoints' flows", got)
	}
	for _, f := range got {
		if f.OrigDstPort != 53 || f.ReplySrcPort == 0 || f.ReplySrcPort != uint16(prevEndpoint(prev, f.ReplySrc.String()).Port) {
			t.Errorf("stale after the target port changed: %v, want the old endpoint's port", f)
		}
	}
	// A UDP port that had no endpoints gets some: flush its flows.
	empty := proxytest.Fixture()
	for _, p := range empty.Services {
		if p.Name.Protocol == model.ProtocolUDP {
			p.Cluster = nil
		}
	}
	got = proxy.StaleConntrack(empty, proxytest.Fixture())
	if len(got) != 1 || got[0].OrigDst.String() != "10.1.0.10" || got[0].ReplySrc.IsValid() {
		t.Errorf("stale after endpoints appear = %v", got)
	}
	if got := proxy.StaleConntrack(nil, next); got != nil {
		t.Errorf("stale without a previous state = %v", got)
	}
}

// prevEndpoint is the kube-dns UDP endpoint at ip in a fixture.
func prevEndpoint(d *proxy.Desired, ip string) model.Endpoint {
	for _, p := range d.Services {
		if p.Name.String() == "kube-system/kube-dns:dns" {
			for _, e := range p.Cluster {
				if e.IP.String() == ip {
					return e
				}
			}
		}
	}
	return model.Endpoint{}
}
