package iptables

import (
	"context"
	"github.com/kdive/kdive/internal/xtables"
	"strings"
	"testing"

	"github.com/kdive/kdive/internal/model"
)

// Sync, Cleanup and flavour detection against fakeIPTables (no root).

func TestSyncFake(t *testing.T) {
	for _, fl := range xtables.Flavours {
		t.Run(string(fl), func(t *testing.T) {
			ctx := context.Background()
			f := newFakeIPTables()
			p := f.Proxier(fl)
			d := fixture()
			if err := p.Sync(ctx, d); err != nil {
				t.Fatal(err)
			}
			sent := f.sent()
			if len(sent) != 1 || !strings.Contains(sent[0], "-I PREROUTING 1 -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES") {
				t.Fatalf("first sync sent %d restores:\n%s", len(sent), strings.Join(sent, "\n---\n"))
			}
			for _, c := range Render(d).Chains() {
				if !f.chains(fl, c.Table)[c.Name] {
					t.Errorf("%s %s missing", c.Table, c.Name)
				}
			}

			// Nothing changed: nothing sent.
			if err := p.Sync(ctx, unchanged(d)); err != nil {
				t.Fatal(err)
			}
			if s := f.sent(); len(s) != 0 {
				t.Errorf("no-op sync sent %v", s)
			}

			// A full sync of the same state rewrites everything, but no
			// hook twice.
			if err := p.Sync(ctx, d); err != nil {
				t.Fatal(err)
			}
			if s := f.sent(); len(s) != 1 || strings.Contains(s[0], "-I ") {
				t.Errorf("second full sync sent:\n%s", strings.Join(s, "\n---\n"))
			}

			// A port loses its endpoints: its chains go, REJECT appears in
			// filter, KUBE-SERVICES loses its jump.
			web := p.r.names.port(port(d, "default/web:https").Name)
			d2 := withEndpoints(d, "default/web:https")
			if err := p.Sync(ctx, d2); err != nil {
				t.Fatal(err)
			}
			s := f.sent()
			if len(s) != 1 || !strings.Contains(s[0], "*filter\n:KUBE-SERVICES - [0:0]\n") ||
				!strings.Contains(s[0], "default/web:https has no endpoints") || !strings.Contains(s[0], "-X "+web.svc+"\n") {
				t.Errorf("endpoints gone sent:\n%s", strings.Join(s, "\n---\n"))
			}
			if f.chains(fl, TableNAT)[web.svc] {
				t.Errorf("%s still there", web.svc)
			}

			// The canary rule gone from filter: the next Sync resyncs.
			if _, err := f.run(ctx, "", "iptables-"+string(fl), "-w", "-t", "filter", "-F"); err != nil {
				t.Fatal(err)
			}
			if err := p.Sync(ctx, unchanged(d2)); err != nil {
				t.Fatal(err)
			}
			if st := p.Stats(); st.CanaryResyncs != 1 || !st.Last.Full {
				t.Errorf("flush not noticed: %+v", st)
			}
			f.sent()

			// A failed restore names the port; the next Sync is full.
			eps := port(d, "default/web:http").Endpoints[:1]
			f.fail = "-A " + p.r.names.port(port(d, "default/web:http").Name).svc
			err := p.Sync(ctx, withEndpoints(d2, "default/web:http", eps...))
			if err == nil || !strings.Contains(err.Error(), "sync service default/web:http") {
				t.Errorf("failed restore: %v", err)
			}
			if err := p.Sync(ctx, unchanged(d2)); err != nil {
				t.Fatal(err)
			}
			if st := p.Stats(); !st.Last.Full || st.Failures != 1 {
				t.Errorf("after a failure: %+v", st)
			}
		})
	}
}

// TestLegacyCanaryGate: on legacy, an untouched table is not listed;
// a changed one is.
func TestLegacyCanaryGate(t *testing.T) {
	ctx := context.Background()
	f := newFakeIPTables()
	p := f.Proxier(FlavourLegacy)
	var listings []string
	run := p.run
	p.run = func(ctx context.Context, stdin, name string, args ...string) (string, error) {
		if strings.HasSuffix(name, "-restore") && isListing(stdin) {
			listings = append(listings, stdin)
		}
		return run(ctx, stdin, name, args...)
	}
	d := fixture()
	if err := p.Sync(ctx, d); err != nil {
		t.Fatal(err)
	}
	if err := p.Sync(ctx, unchanged(d)); err != nil {
		t.Fatal(err)
	}
	if len(listings) != 0 {
		t.Errorf("untouched tables listed: %q", listings)
	}
	f.tables[FlavourLegacy][TableMangle].rules["PREROUTING"] = []string{"-j ACCEPT"}
	if err := p.Sync(ctx, unchanged(d)); err != nil {
		t.Fatal(err)
	}
	if len(listings) != 1 || listings[0] != "*mangle\n-S KUBE-KDIVE-CANARY\nCOMMIT\n" {
		t.Errorf("listings after mangle changed: %q", listings)
	}
	if st := p.Stats(); st.CanaryResyncs != 0 || st.NoopSyncs != 2 {
		t.Errorf("stats: %+v", st)
	}
}

func TestDetectFlavour(t *testing.T) {
	for _, c := range []struct {
		name    string
		nft     string
		legacy  string
		missing Flavour
		want    Flavour
	}{
		{"empty: nft", "", "", "", FlavourNFT},
		{"kubelet hint in nft", "*mangle\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT\n", "*filter\n-A INPUT -j ACCEPT\n-A INPUT -j ACCEPT\nCOMMIT\n", "", FlavourNFT},
		{"kubelet canary in legacy", "", "*mangle\n:KUBE-KUBELET-CANARY - [0:0]\nCOMMIT\n", "", FlavourLegacy},
		{"kdive ran with legacy", "", "*nat\n:KUBE-KDIVE-CANARY - [0:0]\nCOMMIT\n", "", FlavourLegacy},
		{"more legacy rules", "*filter\n-A INPUT -j ACCEPT\nCOMMIT\n", "*filter\n-A INPUT -j ACCEPT\n-A INPUT -j DROP\nCOMMIT\n", "", FlavourLegacy},
		{"more nft rules", "*filter\n-A INPUT -j ACCEPT\n-A INPUT -j DROP\nCOMMIT\n", "*filter\n-A INPUT -j ACCEPT\nCOMMIT\n", "", FlavourNFT},
		{"no legacy tools", "", "", FlavourLegacy, FlavourNFT},
		{"no nft tools", "", "", FlavourNFT, FlavourLegacy},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newFakeIPTables()
			f.missing[c.missing] = true
			for fl, text := range map[Flavour]string{FlavourNFT: c.nft, FlavourLegacy: c.legacy} {
				if text == "" {
					continue
				}
				if _, err := f.run(context.Background(), text, fl.Restore()); err != nil {
					t.Fatal(err)
				}
			}
			got, err := detectFlavour(context.Background(), f.run)
			if err != nil || got != c.want {
				t.Errorf("got %q, %v; want %q", got, err, c.want)
			}
		})
	}
}

// TestCleanupFake: hooks and chains of both flavours go; a chain a
// foreign rule jumps to stays, with what it jumps to.
func TestCleanupFake(t *testing.T) {
	ctx := context.Background()
	f := newFakeIPTables()
	if err := f.Proxier(FlavourNFT).Sync(ctx, fixture()); err != nil {
		t.Fatal(err)
	}
	// An earlier legacy run's rules (a Proxier would clean the other
	// flavour first).
	legacy := Render(fixture()).Text() + "*nat\n-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\nCOMMIT\n"
	if _, err := f.run(ctx, legacy, "iptables-legacy-restore"); err != nil {
		t.Fatal(err)
	}
	foreign := "*nat\n:FOREIGN - [0:0]\n-A FOREIGN -j KUBE-MARK-MASQ\n-A POSTROUTING -s 192.0.2.1 -j MASQUERADE\nCOMMIT\n"
	if _, err := f.run(ctx, foreign, "iptables-nft-restore"); err != nil {
		t.Fatal(err)
	}
	if err := f.Proxier(FlavourNFT).Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	for _, fl := range xtables.Flavours {
		for _, tb := range tables {
			for c := range f.chains(fl, tb) {
				if isOurs(c) && !(fl == FlavourNFT && tb == TableNAT && c == chainMarkMasq) {
					t.Errorf("%s %s %s left", fl, tb, c)
				}
			}
		}
		save := f.save(fl, "")
		if strings.Contains(save, "kubernetes") {
			t.Errorf("%s hooks left:\n%s", fl, save)
		}
	}
	nat := f.save(FlavourNFT, TableNAT)
	for _, want := range []string{"-A FOREIGN -j KUBE-MARK-MASQ", "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000", "-A POSTROUTING -s 192.0.2.1 -j MASQUERADE"} {
		if !strings.Contains(nat, want) {
			t.Errorf("cleanup removed %q", want)
		}
	}
}

// TestPartialPlanNames: a changed port's plan holds only its chains.
func TestPartialPlanNames(t *testing.T) {
	f := newFakeIPTables()
	p := f.Proxier(FlavourNFT)
	d := fixture()
	if err := p.Sync(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	eps := append([]model.Endpoint(nil), port(d, "kube-system/kube-dns:dns").Endpoints...)
	eps[1].Port = 5353
	rs := p.r.render(withEndpoints(d, "kube-system/kube-dns:dns", eps...), p.prev)
	pl := p.planPartial(rs)
	chains, _, deleted := pl.counts()
	if chains != 2 || deleted != 1 || len(pl.svc) != 1 || pl.svc[0][0].Service.String() != "kube-system/kube-dns:dns" {
		t.Errorf("plan: %d chains written, %d deleted: %s", chains, deleted, pl.inputs(FlavourNFT, nil))
	}
}

// TestLegacyFreshSplit: a large first sync into an empty legacy table
// goes as several processes; into a full one, as one.
func TestLegacyFreshSplit(t *testing.T) {
	ctx := context.Background()
	f := newFakeIPTables()
	p := f.Proxier(FlavourLegacy)
	d := scaleDesired(4000, 10)
	if err := p.Sync(ctx, d); err != nil {
		t.Fatal(err)
	}
	if n := p.Stats().Last.Restores; n < 2 {
		t.Errorf("fresh: %d restores, want several", n)
	}
	if got, want := len(f.chains(FlavourLegacy, TableNAT)), 4000*11+5+5; got != want {
		t.Errorf("%d nat chains, want %d", got, want)
	}
	if err := p.Sync(ctx, d); err != nil {
		t.Fatal(err)
	}
	if n := p.Stats().Last.Restores; n != 1 {
		t.Errorf("full table: %d restores, want 1", n)
	}
}
