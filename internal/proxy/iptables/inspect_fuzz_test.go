package iptables

import (
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy"
)

// Fuzz tests of the iptables-save reader: it must never panic on what
// iptables-save (or someone editing the tables) prints, refuse what it
// does not understand with an error naming the chain and rule, and read
// back what AppendSave writes.

// seedRules are rule texts (after "-A CHAIN") of the golden file and of
// a rendered fixture, plus shapes the reader refuses.
func seedRules(f *testing.F) []string {
	var rules []string
	if b, err := os.ReadFile("testdata/golden.rules"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(l, "-A "); ok {
				_, rule, _ := strings.Cut(rest, " ")
				rules = append(rules, rule)
			}
		}
	}
	rs := Render(fixture())
	for _, c := range append(rs.Chains(), rs.Hooks...) {
		for i := range c.Rules {
			rules = append(rules, strings.TrimPrefix(string(c.Rules[i].AppendSave(nil)), " "))
		}
	}
	return append(rules,
		"-i eth0 -j KUBE-MARK-MASQ", "! -d 10.0.0.1/32 -j KUBE-MARK-MASQ", `-m comment --comment "unterminated`,
		"-m statistic --mode random --probability 0.33333333349 -j KUBE-SEP-X", "-j MARK --set-xmark 0x4000/0x4000",
		"-m recent --rcheck --seconds 10800 --reap --name KUBE-SEP-X --mask 255.255.255.255 --rsource -j KUBE-SEP-X",
		`-m comment --comment "a \" quote" -j RETURN`, "-p tcp -m tcp --dport 99999 -j DROP", "-s 10.0.0.0/33 -j RETURN")
}

// FuzzParseSavedRule: a rule the reader accepts is printed back
// (AppendSave) into text it reads as the same rule; the printed form is
// stable from then on.
func FuzzParseSavedRule(f *testing.F) {
	for _, r := range seedRules(f) {
		f.Add(r)
	}
	f.Fuzz(func(t *testing.T, text string) {
		r, err := parseSavedRule(text)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error")
			}
			return
		}
		once := string(r.AppendSave(nil))
		r2, err := parseSavedRule(once)
		if err != nil {
			t.Fatalf("accepted %q, but not its printed form %q: %v", text, once, err)
		}
		if twice := string(r2.AppendSave(nil)); twice != once {
			t.Fatalf("printing is not stable:\n%q\n%q\nfrom %q", once, twice, text)
		}
	})
}

// FuzzInspectSaved: whole iptables-save outputs. Whatever the text, the
// reader returns a table or an error naming the table, chain and rule; a
// table it returns can be shown (LB) and traced without a panic.
func FuzzInspectSaved(f *testing.F) {
	f.Add(savedText(Render(fixture())))
	if b, err := os.ReadFile("testdata/golden.rules"); err == nil {
		f.Add(string(b))
	}
	f.Add("*nat\n:KUBE-SVC-AAAAAAAAAAAAAAAA - [0:0]\n[0:0] -A KUBE-SVC-AAAAAAAAAAAAAAAA -m statistic --mode nth --every 2 -j KUBE-SEP-X\nCOMMIT\n")
	f.Add("*nat\n:PREROUTING ACCEPT [0:0]\n[1:2] -A PREROUTING -j KUBE-SERVICES\n[3 -A KUBE-SERVICES\n-A\n*\n:\n")
	f.Add("*filter\n:KUBE-SERVICES - [0:0]\n[9:9] -A KUBE-SERVICES -m comment --comment \"x\" -j KUBE-SVC-NOPE\nCOMMIT\n")
	local := []netip.Addr{netip.MustParseAddr("172.20.1.10")}
	packets := []proxy.Packet{
		{Src: netip.MustParseAddr("10.0.1.5"), Proto: model.ProtocolTCP, Dst: netip.MustParseAddr("172.30.0.41"), Port: 80},
		{Src: netip.MustParseAddr("198.51.100.10"), Proto: model.ProtocolUDP, Dst: local[0], Port: 30000},
		{Src: local[0], Proto: model.ProtocolTCP, Dst: netip.MustParseAddr("1.2.3.4"), Port: 80, FromNode: true},
	}
	f.Fuzz(func(t *testing.T, out string) {
		in, err := inspectSaved(FlavourNFT, out, local)
		if err != nil {
			if !strings.Contains(err.Error(), " chain ") {
				t.Fatalf("error %q does not name the chain", err)
			}
			return
		}
		in.LB()
		in.Unmapped()
		for _, p := range packets {
			in.Trace(p)
		}
	})
}
