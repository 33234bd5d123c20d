package nftables

import (
	"context"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/kdive/kdive/internal/kernel/nft"
	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy"
	"github.com/kdive/kdive/internal/proxy/proxytest"
)

// FuzzParseListing: the reader of `nft -j list table ip kdive-proxy`
// never panics; it refuses with an error naming the listing's object;
// what it accepts can be shown (LB), traced and explained. As root, the
// text printer round-trips through the kernel: a ruleset it read, once
// loaded into a throwaway namespace, lists back as the same ruleset.
func FuzzParseListing(f *testing.F) {
	if b, err := os.ReadFile(inspectListing); err == nil {
		f.Add(b)
	}
	const head = `{"nftables": [{"metainfo": {"json_schema_version": 1}}, {"table": {"family": "ip", "name": "kdive-proxy"}},
		{"chain": {"family": "ip", "table": "kdive-proxy", "name": "services"}},
		{"chain": {"family": "ip", "table": "kdive-proxy", "name": "reject-chain"}},`
	for _, objs := range []string{
		`{"rule": {"family": "ip", "table": "kdive-proxy", "chain": "services", "handle": 7, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 22}}, {"accept": null}]}}`,
		`{"rule": {"family": "ip", "table": "kdive-proxy", "chain": "services", "handle": 9, "expr": [{"masquerade": null}]}}`,
		`{"set": {"family": "ip", "table": "kdive-proxy", "name": "ports", "type": "inet_service"}}`,
		`{"map": {"family": "ip", "table": "kdive-proxy", "name": "service-ips", "type": ["ipv4_addr", "inet_proto", "inet_service"], "map": "verdict", "stmt": [{"counter": null}], "elem": [
			[{"elem": {"val": {"concat": ["10.1.0.3", "tcp", 80]}, "comment": "default/empty", "counter": {"packets": 3, "bytes": 180}}}, {"goto": {"target": "reject-chain"}}]]}}`,
		`{"map": {"family": "ip", "table": "kdive-proxy", "name": "service-ips", "type": ["ipv4_addr", "inet_proto", "inet_service"], "map": "verdict", "elem": [[{"concat": ["10.1.0.2", "tcp", 80]}, {"drop": null}]]}}`,
		// A shortened comment (a 143-byte name), and a comment too long
		// for nft, which the printer shortens.
		`{"map": {"family": "ip", "table": "kdive-proxy", "name": "service-ips", "type": ["ipv4_addr", "inet_proto", "inet_service"], "map": "verdict", "elem": [
			[{"elem": {"val": {"concat": ["10.1.0.3", "tcp", 80]}, "comment": "` + elemComment(longName("", "", "metrics-exporte")) + `"}}, {"goto": {"target": "reject-chain"}}],
			[{"elem": {"val": {"concat": ["10.1.0.4", "tcp", 80]}, "comment": "` + longName("", "", "metrics-exporte").String() + `"}}, {"goto": {"target": "reject-chain"}}]]}}`,
		`{"chain": {"family": "ip", "table": "kdive-proxy", "name": "in", "type": "filter", "hook": "input", "prio": 0, "policy": "drop"}}`,
		`{"rule": {"family": "ip", "table": "kdive-proxy", "chain": "services", "handle": 3, "expr": [{"vmap": {"key": {"concat": [{"payload": {"protocol": "ip", "field": "daddr"}}, {"meta": {"key": "l4proto"}}, {"payload": {"protocol": "th", "field": "dport"}}]}, "data": "@service-ips"}}]}}`,
	} {
		f.Add([]byte(head + objs + "]}"))
	}
	f.Add([]byte(`{"nftables": []}`))
	f.Add([]byte(`{"nftables": [{"table": {"family": "ip", "name": "kdive-proxy"}}, {"rule": {"chain": "nope"}}]}`))

	ns := fuzzNetNS(f)
	packets := []proxy.Packet{
		{Src: proxytest.LocalPod, Proto: model.ProtocolTCP, Dst: netip.MustParseAddr("10.1.0.2"), Port: 80},
		{Src: netip.MustParseAddr("198.51.100.10"), Proto: model.ProtocolUDP, Dst: proxytest.NodeIP, Port: 30080},
		{Src: proxytest.NodeIP, Proto: model.ProtocolTCP, Dst: proxytest.NodeIP, Port: 30080, FromNode: true},
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		l, err := parseListing(data)
		if err != nil {
			if msg := err.Error(); !strings.HasPrefix(msg, "parse nft listing: ") && !strings.HasPrefix(msg, "chain ") {
				t.Fatalf("error %q does not say what was being read", msg)
			}
			return
		}
		l.rs.LocalIPs = []netip.Addr{netip.MustParseAddr("127.0.0.1"), proxytest.NodeIP}
		text := l.rs.String()
		insp := &inspection{l}
		insp.LB()
		for _, p := range packets {
			insp.Trace(p)
			insp.Explain(p)
		}
		if ns == nil {
			return
		}
		ctx := context.Background()
		if err := ns.Nft(ctx, (&Transaction{Replace: l.rs}).String()); err != nil {
			return // a listing no kernel would print: not loadable, nothing to compare
		}
		js, err := nft.New(ns).ListJSON(ctx, nftTable)
		if err != nil {
			t.Fatal(err)
		}
		back, err := parseListing(js)
		if err != nil {
			t.Fatalf("the kernel's listing of a table read before is refused: %v\ntable:\n%s", err, text)
		}
		if got := back.rs.String(); got != text {
			t.Fatalf("read back differently after a round trip through the kernel:\n%s", lineDiff(got, text))
		}
	})
}
