package ktest_test

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/ktest"
)

// A change made right after StartMonitor returns is seen, and one made
// right before Finish too; the markers that prove it are not in the lines.
func TestMonitorSeesEveryChange(t *testing.T) {
	ktest.RequireFeature(t, kernel.FeatureNFTables)
	ns := ktest.NewNetNS(t)
	ctx := context.Background()
	for _, c := range []struct {
		argv        []string
		first       func() error // made at once, through netlink where it can
		last        []string
		wantInLines []string
	}{
		{
			argv: []string{"nft", "monitor"},
			first: func() error {
				_, err := ns.Run(ctx, "", "nft", "add", "table", "ip", "first")
				return err
			},
			last:        []string{"nft", "add", "table", "ip", "last"},
			wantInLines: []string{"add table ip first", "add table ip last"},
		},
		{
			argv: []string{"ip", "-o", "monitor", "route", "address"},
			first: func() error {
				return ns.ReplaceRoute(kernel.Route{Dst: netip.MustParsePrefix("198.51.100.1/32"), Blackhole: true})
			},
			last:        []string{"ip", "route", "add", "blackhole", "198.51.100.2/32"},
			wantInLines: []string{"blackhole 198.51.100.1", "blackhole 198.51.100.2"},
		},
	} {
		m := ktest.StartMonitor(t, ns, c.argv...)
		if err := c.first(); err != nil {
			t.Fatal(err)
		}
		if out, err := ns.Run(ctx, "", c.last[0], c.last[1:]...); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		var lines []string
		for _, e := range m.Finish() {
			lines = append(lines, e.Text)
		}
		all := strings.Join(lines, "\n")
		for _, w := range c.wantInLines {
			if !strings.Contains(all, w) {
				t.Errorf("%s saw %q; want a line with %q", strings.Join(c.argv, " "), all, w)
			}
		}
		if strings.Contains(all, "ktest-marker") || strings.Contains(all, "4207") {
			t.Errorf("%s: marker lines kept: %q", strings.Join(c.argv, " "), all)
		}
	}
}
