package nftables

import (
	"context"
	"regexp"
	"strings"
	"testing"

	"github.com/kdive/kdive/internal/kernel/ktest"
	"github.com/kdive/kdive/internal/kernel/nft"
	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy/proxytest"
)

// expires is the countdown nft lists for a timed element.
var expires = regexp.MustCompile(` expires [0-9hmsd.]+`)

// A new proxier over a table an earlier one left (an agent restart)
// adopts it: its first Sync sends nothing when nothing changed, only the
// difference when something did, and session-affinity clients the kernel
// recorded survive.
func TestKernelAdoptsTableOnRestart(t *testing.T) {
	first := newKernelProxier(t)
	d := proxytest.Fixture()
	if err := first.Sync(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	const client = "10.0.1.99"
	set := "affinity-default/affinity/tcp/80__10.0.2.7/8080"
	if _, err := first.ns.Run(context.Background(), "", "nft", "add", "element", Family, Table, set, "{ "+client+" }"); err != nil {
		t.Fatalf("record an affinity client: %v", err)
	}
	before := listTable(t, first.ns)
	first.Close()

	// Same state: nothing is sent.
	second := &kernelProxier{Proxier: New(Options{NetNS: first.ns}), ns: first.ns}
	t.Cleanup(func() { second.Close() })
	second.run = func(ctx context.Context, tx *nft.Transaction) error {
		script := tx.String()
		second.runs++
		second.last = script
		return second.apply(ctx, tx)
	}
	if err := second.Sync(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	if second.runs != 0 {
		t.Errorf("the first Sync over an identical table ran nft %d times:\n%s", second.runs, second.last)
	}
	after := listTable(t, first.ns)
	if expires.ReplaceAllString(after, "") != expires.ReplaceAllString(before, "") || !strings.Contains(after, client) {
		t.Errorf("the table changed on adoption, or lost the affinity client %s:\n%s", client, after)
	}

	// A third proxier, with one service changed: only the difference.
	third := &kernelProxier{Proxier: New(Options{NetNS: first.ns}), ns: first.ns}
	t.Cleanup(func() { third.Close() })
	third.run = func(ctx context.Context, tx *nft.Transaction) error {
		script := tx.String()
		third.runs++
		third.last = script
		return third.apply(ctx, tx)
	}
	s := stateOf(d)
	s.edit(t, "default/web:http", func(sp *model.ServicePort) { sp.Endpoints = sp.Endpoints[:1] })
	if err := third.Sync(context.Background(), s.desired()); err != nil {
		t.Fatal(err)
	}
	if third.runs != 1 || strings.Contains(third.last, "delete table") || strings.Contains(third.last, "table ip kdive-proxy {") {
		t.Errorf("the first Sync after a change replaced the table instead of sending the difference:\n%s", third.last)
	}
	if got := listTable(t, first.ns); !strings.Contains(got, client) {
		t.Errorf("the affinity client was removed by the difference:\n%s", got)
	}
	// Without the client, the table is what a fresh load of the new
	// state gives.
	if _, err := first.ns.Run(context.Background(), "", "nft", "delete", "element", Family, Table, set, "{ "+client+" }"); err != nil {
		t.Fatal(err)
	}
	if got, want := listTable(t, first.ns), freshList(t, ktest.NewNetNS(t), Render(s.desired())); got != want {
		t.Errorf("after adoption and a change the table differs from a fresh load:\n%s", lineDiff(got, want))
	}
}
