package xtables

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/kdive/kdive/internal/kernel"
)

// TestRuleSaved: rules in iptables-save's form (both modes' shapes, the
// IPVS mode's unusual module orders and bare -p among them) read back
// into Rules that print as the same text.
func TestRuleSaved(t *testing.T) {
	for _, text := range []string{
		`-d 10.1.0.2/32 -p tcp -m comment --comment "default/web:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-X`,
		`! -s 10.0.0.0/16 -d 10.1.0.2/32 -p tcp -m comment --comment "a b" -m tcp --dport 80 -j KUBE-MARK-MASQ`,
		`-m comment --comment "x y" -m recent --rcheck --seconds 10800 --reap --name KUBE-SEP-X --mask 255.255.255.255 --rsource -j KUBE-SEP-X`,
		`-m statistic --mode random --probability 0.33333333349 -j KUBE-SEP-X`,
		`-p tcp -m comment --comment "a b" -m tcp -j DNAT --to-destination 10.0.1.2:8080`,
		`-m mark ! --mark 0x4000/0x4000 -j RETURN`,
		`-j MARK --set-xmark 0x4000/0x0`,
		`-j MARK --set-xmark 0x5/0x7`,
		`-m comment --comment "k" -j MASQUERADE --random-fully`,
		`-m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE`,
		`-m conntrack --ctstate NEW -m set ! --match-set KUBE-IPVS-IPS dst -j REJECT --reject-with icmp-port-unreachable`,
		`-p udp -m comment --comment "n p" -m set --match-set KUBE-NODE-PORT-UDP dst -j RETURN`,
		`-s 10.0.0.0/16 -m comment --comment "s c" -m set --match-set KUBE-SHORT-CIRCUIT dst,dst -j SET --map-set KUBE-SHORT-CIRCUIT dst,dst --map-mark`,
		`-m addrtype --src-type LOCAL -m comment --comment "s c" -m set --match-set KUBE-SHORT-CIRCUIT dst,dst -j KUBE-X`,
		`-m comment --comment "s c" -m mark --mark 0x10000000/0x10000000 -m addrtype --src-type LOCAL -j MASQUERADE`,
		`-p tcp -j ACCEPT`,
	} {
		r, err := ParseRule(text)
		if err != nil {
			t.Errorf("%s: %v", text, err)
			continue
		}
		if got := r.String(); got != text {
			t.Errorf("read %s\nprints %s", text, got)
		}
	}
	for _, bad := range []string{"-i eth0 -j X", "! -d 10.0.0.1/32 -j X", "-m physdev --physdev-in x -j X", "-j MARK --set-xmark bogus",
		"-m udp -p tcp -j X", "-j SET --map-mark", "-j DNAT", `-m comment --comment "open`} {
		if r, err := ParseRule(bad); err == nil {
			t.Errorf("%s: accepted as %s", bad, r.String())
		}
	}
}

// TestRuleKubeProxy: the iptables mode's form is upstream's.
func TestRuleKubeProxy(t *testing.T) {
	r := Rule{Comment: "default/web:http", Proto: "tcp", Dst: netip.MustParsePrefix("10.1.0.2/32"), DPort: 80,
		Src: netip.MustParsePrefix("10.0.0.0/16"), NotSrc: true, Jump: "KUBE-MARK-MASQ"}
	var b strings.Builder
	r.WriteKubeProxy(&b)
	if want := " -m comment --comment default/web:http -m tcp -p tcp -d 10.1.0.2 --dport 80 ! -s 10.0.0.0/16 -j KUBE-MARK-MASQ"; b.String() != want {
		t.Errorf("got  %q\nwant %q", b.String(), want)
	}
	for _, c := range []struct {
		r    Rule
		want string
	}{
		{Rule{Jump: Mark, MarkOr: 0x4000}, " -j MARK --or-mark 0x4000"},
		{Rule{Jump: Mark, MarkXor: 0x4000}, " -j MARK --xor-mark 0x4000"},
		{Rule{Jump: Reject}, " -j REJECT"},
	} {
		var b strings.Builder
		c.r.WriteKubeProxy(&b)
		if b.String() != c.want {
			t.Errorf("got %q, want %q", b.String(), c.want)
		}
	}
}

type testContext map[string][]kernel.IPSetEntry

func (testContext) Local(a netip.Addr) bool { return a == netip.MustParseAddr("172.20.1.10") }

func (c testContext) IPSet(name string) (string, []kernel.IPSetEntry, bool) {
	es, ok := c[name]
	return "hash:ip,port,ip", es, ok
}

// TestRuleMatch: each match against a packet; a set match reads the
// packet's fields its flags name.
func TestRuleMatch(t *testing.T) {
	pod, svc, node := netip.MustParseAddr("10.0.1.2"), netip.MustParseAddr("10.1.0.2"), netip.MustParseAddr("172.20.1.10")
	ctx := testContext{"HAIRPIN": {{IP: svc, Proto: "tcp", Port: 80, IP2: pod}}}
	p := Packet{Src: pod, Dst: svc, Proto: "tcp", DPort: 80, Mark: 0x4000}
	parse := func(s string) *Rule {
		r, err := ParseRule(s)
		if err != nil {
			t.Fatal(err)
		}
		return &r
	}
	for _, c := range []struct {
		rule string
		p    Packet
		want Matched
	}{
		{"-m set --match-set HAIRPIN dst,dst,src -j X", p, Matches},
		{"-m set --match-set HAIRPIN src,dst,dst -j X", p, NoMatch},
		{"-m set ! --match-set HAIRPIN dst,dst,src -j X", p, NoMatch},
		{"-m set --match-set NONE dst,dst,src -j X", p, NoMatch},
		{"! -s 10.0.0.0/16 -j X", p, NoMatch},
		{"-s 10.0.0.0/16 -d 10.1.0.2/32 -p tcp -m tcp --dport 80 -j X", p, Matches},
		{"-p udp -j X", p, NoMatch},
		{"-m mark --mark 0x4000/0x4000 -j X", p, Matches},
		{"-m mark ! --mark 0x4000/0x4000 -j X", p, NoMatch},
		{"-m addrtype --dst-type LOCAL -j X", p, NoMatch},
		{"-m addrtype --dst-type LOCAL -j X", Packet{Src: pod, Dst: node}, Matches},
		{"-m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j X", p, Matches},
		{"-m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j X", Packet{DNAT: true}, NoMatch},
		{"-m statistic --mode random --probability 0.5 -j X", p, MatchesSometimes},
		{"-m recent --rcheck --seconds 10 --reap --name S -j X", p, MatchesSometimes},
		{"-m recent --set --name S -j X", p, Matches},
	} {
		if got := parse(c.rule).Match(&c.p, ctx); got != c.want {
			t.Errorf("%s on %+v: %d, want %d", c.rule, c.p, got, c.want)
		}
	}
	if m := parse("-j MARK --set-xmark 0x5/0x7").NewMark(0xf0); m != 0xf5 {
		t.Errorf("--set-xmark 0x5/0x7 on 0xf0: %#x", m)
	}
}

// FuzzParseRule: a rule the reader accepts prints (String) as text it
// reads back as the same rule, whatever the order of its modules (the
// probability as the kernel rounds it), and prints the same again.
func FuzzParseRule(f *testing.F) {
	for _, s := range []string{
		`-m addrtype --src-type LOCAL -m comment --comment "s c" -m set --match-set S dst,dst -j SET --map-set S dst,dst --map-mark`,
		`-p udp -m comment --comment "n p" -m set ! --match-set N dst -j RETURN`,
		`! -s 10.0.0.0/16 -d 10.1.0.2/32 -p tcp -m tcp --dport 80 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP`,
		`-m recent --rcheck --seconds 10 --reap --name S --mask 255.255.255.255 --rsource -m statistic --mode random --probability 0.5 -j X`,
		`-m mark --mark 0x4000/0x4000 -j MARK --set-xmark 0x5/0x7`,
		`-m comment --comment "a \"quoted\" \\ name" -j X`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		r, err := ParseRule(text)
		if err != nil || strings.ContainsFunc(r.Comment, isControl) {
			return // control characters print as '?' (FuzzCommentQuoting)
		}
		once := r.String()
		r2, err := ParseRule(once)
		if err != nil || r2.String() != once {
			t.Fatalf("%q printed as %q, read back as %q (%v)", text, once, r2.String(), err)
		}
		if r2.Probability = r.Probability; !r2.Equal(r) {
			t.Fatalf("%q printed as %q reads back as another rule", text, once)
		}
	})
}

func isControl(c rune) bool { return c < 0x20 || c == 0x7f }

// FuzzCommentQuoting: whatever a comment holds, the rule prints, in both
// forms, as one line of restore input (a newline would start another
// rule) that reads back as the same comment, control characters as '?'.
func FuzzCommentQuoting(f *testing.F) {
	for _, s := range []string{`ns/name:port`, `a "b" c`, `x\" -j ACCEPT`, "a\nCOMMIT\n", `\`, `"`, ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, c string) {
		if c == "" {
			return // no comment module
		}
		want := []byte(c)
		for i, b := range want {
			if isControl(rune(b)) {
				want[i] = '?'
			}
		}
		r := Rule{Comment: c, Jump: "KUBE-X"}
		var kp strings.Builder
		r.WriteKubeProxy(&kp)
		for _, form := range []string{r.String(), kp.String()} {
			if strings.ContainsAny(form, "\n\r") {
				t.Fatalf("comment %q printed over more than one line: %q", c, form)
			}
			got, err := ParseRule(form)
			if err != nil {
				t.Fatalf("comment %q printed as %q, which does not read back: %v", c, form, err)
			}
			if got.Comment != string(want) || got.Jump != "KUBE-X" {
				t.Fatalf("comment %q printed as %q reads back as comment %q jump %q", c, form, got.Comment, got.Jump)
			}
		}
	})
}
