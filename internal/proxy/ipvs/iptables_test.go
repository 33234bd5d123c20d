package ipvs

import (
	"strings"
	"testing"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/ktest"
	"github.com/kdive/kdive/internal/proxy/proxytest"
)

// TestIptablesRestoreAndCleanup restores the fixture's rules with both
// iptables back ends in a fresh namespace (natively: no IPVS needed),
// reads them back, checks a second pass finds nothing to change (the
// rendered rules are in iptables-save's own form), and cleans up.
func TestIptablesRestoreAndCleanup(t *testing.T) {
	ktest.RequireFeature(t, kernel.FeatureNFTables)
	r := Render(proxytest.Fixture(), Config{RejectUnknownPorts: true})
	for _, f := range []string{"nft", "legacy"} {
		t.Run(f, func(t *testing.T) {
			ns := ktest.NewNetNS(t)
			sets, err := ns.OpenIPSets()
			if err != nil {
				t.Fatal(err)
			}
			defer sets.Close()
			var stats SyncStats
			if _, err := addSetEntries(sets, r, &stats); err != nil {
				t.Fatal(err)
			}
			p := New(Options{NetNS: ns, Flavour: f})
			if err := p.syncIptables(t.Context(), r, &stats); err != nil {
				t.Fatal(err)
			}
			if !stats.IptablesRestored {
				t.Fatal("the first sync restored nothing")
			}
			stats = SyncStats{}
			if err := p.syncIptables(t.Context(), r, &stats); err != nil {
				t.Fatal(err)
			}
			if stats.IptablesRestored {
				out, _ := ns.Run(t.Context(), "", "iptables-"+f+"-save")
				t.Errorf("the second sync restored again: saved rules differ from the rendered ones:\n%s", out)
			}
			if p.iptablesFlavourName(t) != f {
				t.Errorf("flavour %s", p.iptablesFlavourName(t))
			}
			// A new Proxier detects the flavour in use.
			if got := New(Options{NetNS: ns}).iptablesFlavourName(t); got != f {
				t.Errorf("detected flavour %s, want %s", got, f)
			}
			if err := cleanupIptables(t.Context(), ns); err != nil {
				t.Fatal(err)
			}
			if err := cleanupSets(ns); err != nil {
				t.Fatal(err)
			}
			out, err := ns.Run(t.Context(), "", "iptables-"+f+"-save")
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(out, "KUBE-") {
				t.Errorf("after cleanup:\n%s", out)
			}
		})
	}
}

func (p *Proxier) iptablesFlavourName(t *testing.T) string {
	f, err := p.iptablesFlavour(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return string(f)
}

// TestRestoreInput: only what differs is restored; missing jumps are
// inserted first in their built-in chain.
func TestRestoreInput(t *testing.T) {
	r := Render(proxytest.Fixture(), Config{})
	saved := parseSave(r.IptablesText())
	if in := restoreInput(r, saved); in != "" {
		t.Errorf("restore input for rules already in place:\n%s", in)
	}
	delete(saved[tableNat], chainLoadBalancer)
	saved[tableMangle]["OUTPUT"] = nil
	in := restoreInput(r, saved)
	for _, want := range []string{"*nat\n:KUBE-SERVICES - [0:0]", "-A KUBE-LOAD-BALANCER -j KUBE-MARK-MASQ",
		`-I OUTPUT 1 -m comment --comment "kubernetes ipvs firewall and short circuit" -j KUBE-IPVS-FIREWALL`} {
		if !strings.Contains(in, want) {
			t.Errorf("restore input lacks %q:\n%s", want, in)
		}
	}
	if strings.Contains(in, "*filter") || strings.Contains(in, "-I PREROUTING") {
		t.Errorf("restore input touches what is in place:\n%s", in)
	}
}

// TestCleanupInputOwnership: the chains the IPVS and iptables modes name
// alike are removed only where the table shows the IPVS mode alone.
func TestCleanupInputOwnership(t *testing.T) {
	ipvsOnly := Render(proxytest.Fixture(), Config{}).IptablesText()
	in := cleanupInput(parseSave(ipvsOnly))
	for _, want := range []string{"-X KUBE-SERVICES", "-X KUBE-MARK-MASQ", "-X KUBE-FORWARD", "-X KUBE-IPVS-FIREWALL",
		`-D PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`} {
		if !strings.Contains(in, want) {
			t.Errorf("cleanup of the IPVS mode's rules lacks %q:\n%s", want, in)
		}
	}

	iptablesMode := `*nat
:PREROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-SVC-ABCDEF - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-SERVICES -d 10.1.0.2/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-ABCDEF
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
COMMIT
*filter
:KUBE-FORWARD - [0:0]
:KUBE-KDIVE-CANARY - [0:0]
-A KUBE-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
`
	if in := cleanupInput(parseSave(iptablesMode)); in != "" {
		t.Errorf("cleanup touches the iptables mode's rules:\n%s", in)
	}

	// Both: the IPVS mode's own chains go, with the rules that jump to
	// them or match its sets; the shared ones stay.
	mixed := strings.Replace(iptablesMode, "COMMIT", `:KUBE-NODE-PORT - [0:0]
-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT
-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT
-A KUBE-NODE-PORT -j RETURN
COMMIT`, 1)
	in = cleanupInput(parseSave(mixed))
	want := "*nat\n:KUBE-NODE-PORT - [0:0]\n-D KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT\n" +
		"-D KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT\n-X KUBE-NODE-PORT\nCOMMIT\n"
	if in != want {
		t.Errorf("cleanup of a mixed table:\n%s\nwant\n%s", in, want)
	}
}
