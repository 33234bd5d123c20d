package nftables

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy"
	"github.com/kdive/kdive/internal/proxy/proxytest"
)

func TestTraceCases(t *testing.T) {
	proxytest.Run(t, func(t *testing.T, d *proxy.Desired, p proxytest.Packet) proxytest.Result {
		return Trace(Render(d), p)
	})
}

// TestTraceBranches checks what `kdive trace` shows: a branch per
// endpoint, with the service and the chains taken.
func TestTraceBranches(t *testing.T) {
	rs := Render(proxytest.Fixture())
	p := proxytest.Packet{Src: proxytest.LocalPod, Proto: model.ProtocolTCP, Dst: netip.MustParseAddr("10.1.0.2"), Port: 80}
	bs := TraceBranches(rs, p)
	if len(bs) != 3 {
		t.Fatalf("%d branches, want one per endpoint: %+v", len(bs), bs)
	}
	want := "nat-prerouting services cluster-ip-3 cluster-ip-masquerade endpoints-3 nat-postrouting masquerading"
	for _, b := range bs {
		if got := strings.Join(b.Path, " "); got != want || b.Service.String() != "default/web:http" || b.Verdict != proxytest.DNAT {
			t.Errorf("branch %+v: path %q, want %q", b, got, want)
		}
	}
	// A bucket missing from the map shows as a branch that falls
	// through: the summary says the verdicts disagree.
	delete(rs.Sets["endpoints-3"].elems, ElemKey{Addr: p.Dst, Proto: p.Proto, Port: 80, Bucket: 1}.m())
	if got := Trace(rs, p); !strings.HasPrefix(string(got.Verdict), "MIXED") {
		t.Errorf("trace with a missing bucket = %s, want MIXED", got)
	}
}
