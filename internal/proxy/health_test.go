package proxy_test

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kdive/kdive/internal/kernel"
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
		resp, err := c.Get("http://" + addrs[":32000"] + "/healthz")
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
	if _, err := net.DialTimeout("tcp", addrs[":32000"], time.Second); err == nil {
		t.Error("the health check port is still open after its service went")
	}
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
	want := kernel.ConntrackFilter{Protocol: unix.IPPROTO_UDP, OrigDst: netip.MustParseAddr("10.1.0.10"), OrigDstPort: 53, ReplySrc: netip.MustParseAddr("10.0.2.3")}
	if len(got) != 1 || got[0] != want {
		t.Errorf("stale after removing an endpoint = %v, want [%v]", got, want)
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
