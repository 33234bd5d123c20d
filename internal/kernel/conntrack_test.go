package kernel_test

import (
	"context"
	"net/netip"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/ktest"
)

func TestDeleteConntrack(t *testing.T) {
	ktest.RequireFeature(t, kernel.FeatureNFTables)
	a, b := ktest.NewNetNS(t), ktest.NewNetNS(t)
	must(t, a.AddVeth("eth0", kernel.LinkAttrs{}, b, "eth0", kernel.LinkAttrs{}))
	must(t, a.AddAddr("eth0", netip.MustParsePrefix("192.0.2.1/24")))
	must(t, b.AddAddr("eth0", netip.MustParsePrefix("192.0.2.2/24")))
	must(t, a.LinkUp("eth0"))
	must(t, b.LinkUp("eth0"))
	// A rule that uses conntrack makes the kernel track a's connections.
	must(t, a.Nft(context.Background(), "table inet t {\n\tchain out {\n\t\ttype filter hook output priority 0; ct state new accept\n\t}\n}\n"))
	send := func(port int) {
		c, err := a.DialContext(context.Background(), "udp", "192.0.2.2:"+strconv.Itoa(port))
		must(t, err)
		_, err = c.Write([]byte("x"))
		must(t, err)
		c.Close()
	}
	send(5353)
	send(5354)
	if _, err := a.DeleteConntrack(kernel.ConntrackFilter{Protocol: unix.IPPROTO_UDP}); err == nil {
		t.Error("a filter without an address was accepted")
	}
	n, err := a.DeleteConntrack(kernel.ConntrackFilter{Protocol: unix.IPPROTO_UDP, OrigDst: netip.MustParseAddr("192.0.2.2"), OrigDstPort: 5353})
	if err != nil || n != 1 {
		t.Fatalf("deleted %d entries, %v; want the one to port 5353", n, err)
	}
	// The reply's source port is the endpoint's: another port matches none.
	n, err = a.DeleteConntrack(kernel.ConntrackFilter{Protocol: unix.IPPROTO_UDP, ReplySrc: netip.MustParseAddr("192.0.2.2"), ReplySrcPort: 5353})
	if err != nil || n != 0 {
		t.Fatalf("deleted %d entries by reply source port 5353, %v; want none (the one left answers from 5354)", n, err)
	}
	n, err = a.DeleteConntrack(kernel.ConntrackFilter{Protocol: unix.IPPROTO_UDP, ReplySrc: netip.MustParseAddr("192.0.2.2"), ReplySrcPort: 5354})
	if err != nil || n != 1 {
		t.Fatalf("deleted %d entries by reply source, %v; want the one left", n, err)
	}
}
