package nft

import (
	"strings"
	"testing"
)

// FuzzParseListing: nft's JSON listing of a table, which the hostPort
// plugin (CHECK, DEL, GC), the lab router and the tests read. It never
// panics (on nesting included), and what it returns can be queried.
func FuzzParseListing(f *testing.F) {
	for _, s := range []string{
		`{"nftables": [{"metainfo": {}}, {"table": {"family": "ip", "name": "kdive-hostport"}},
			{"chain": {"name": "prerouting", "prio": -101}},
			{"map": {"name": "hostports", "type": ["inet_proto", "inet_service"], "map": ["ipv4_addr", "inet_service"], "elem": [[{"concat": ["tcp", 8080]}, {"concat": ["10.0.1.2", 80]}]]}},
			{"set": {"name": "hairpin", "type": "ipv4_addr", "elem": [{"elem": {"val": "10.0.1.2", "comment": "c1/eth0"}}, {"prefix": {"addr": "10.0.0.0", "len": 8}}]}},
			{"map": {"name": "v", "type": "ipv4_addr", "map": "verdict", "elem": [["10.0.0.1", {"goto": {"target": "c"}}], ["10.0.0.2", {"drop": null}]]}},
			{"counter": {"name": "hits", "packets": 3, "bytes": 180}}]}`,
		`{"nftables": [{"table": {"name": "t"}}, {"map": {"name": "m", "elem": [[1]]}}]}`,
		`{"nftables": [{"table": {"name": "t"}}, {"set": {"name": "s", "elem": [{"concat": [{"concat": [{"concat": []}]}]}]}}]}`,
		`{"nftables": [{"table": {"name": "t"}}, {"set": {"name": "s", "elem": [{"range": ["10.0.0.1", "10.0.0.9"]}, true, null, {}]}}]}`,
		`{"nftables": [{"table": {"name": "t"}}, {"set": {"name": "s", "elem": [{"elem": {}}]}}]}`,
		`[]`, `{"nftables": null}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		l, err := ParseListing(data)
		if err != nil {
			return
		}
		if l.Table.Name == "" {
			t.Fatalf("a listing without a table parsed")
		}
		for _, s := range l.Sets {
			for _, e := range s.Elements {
				_ = strings.Join(e.Key, " . ") + e.String()
			}
		}
		for _, m := range l.Maps {
			_ = l.Map(m.Name)
		}
	})
}
