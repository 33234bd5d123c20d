package nftables

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/kdive/kdive/internal/model"
)

// longName is a service port name as long as Kubernetes allows: a
// 63-character namespace and name (DNS labels) and a 15-character port
// name, 143 bytes as "namespace/name:port".
func longName(nsEnd, nameEnd, port string) model.ServicePortName {
	pad := func(prefix, end string, n int) string {
		return prefix + strings.Repeat("x", n-len(prefix)-len(end)) + end
	}
	return model.ServicePortName{
		Namespace: pad("team-payments-", nsEnd, 63),
		Name:      pad("checkout-api-", nameEnd, 63),
		Port:      port, Protocol: model.ProtocolTCP,
	}
}

// TestElemComment: names that fit are the comment unchanged (no churn for
// existing tables); longer ones are shortened to at most maxComment bytes,
// keep a readable prefix of each part, are stable, differ for names that
// differ only at their ends, parse back as themselves, and resolve to the
// full name when it is known.
func TestElemComment(t *testing.T) {
	fits := []model.ServicePortName{
		{Namespace: "default", Name: "web", Port: "http"},
		{Namespace: "default", Name: "empty"},
		{Namespace: strings.Repeat("n", 63), Name: strings.Repeat("s", 63)},               // unnamed: 127 bytes
		{Namespace: strings.Repeat("n", 63), Name: strings.Repeat("s", 58), Port: "http"}, // 128 bytes
	}
	for _, n := range fits {
		if got := elemComment(n); got != n.String() {
			t.Errorf("elemComment(%s) = %q, want the name unchanged", n, got)
		}
	}

	long := longName("", "", "metrics-exporte")
	if l := len(long.String()); l != 143 {
		t.Fatalf("test name is %d bytes, want 143", l)
	}
	c := elemComment(long)
	t.Logf("%s\n-> %s (%d bytes)", long, c, len(c))
	if len(c) > maxComment {
		t.Errorf("comment %q is %d bytes, over %d", c, len(c), maxComment)
	}
	if again := elemComment(long); again != c {
		t.Errorf("not stable: %q, then %q", c, again)
	}
	ns, rest, _ := strings.Cut(c, "/")
	name, port, _ := strings.Cut(rest, ":")
	if len(ns) < 40 || !strings.HasPrefix(long.Namespace, ns) || len(name) < 40 || !strings.HasPrefix(long.Name, name) ||
		!strings.HasPrefix(port, long.Port+"~") || len(port) != len(long.Port)+1+13 {
		t.Errorf("comment %q does not keep the namespace, name and port readable, with ~hash", c)
	}

	// Names sharing all but their last character get different comments.
	for _, other := range []model.ServicePortName{
		longName("", "y", "metrics-exporte"), longName("y", "", "metrics-exporte"), longName("", "", "metrics-exportf"),
	} {
		if elemComment(other) == c {
			t.Errorf("%s and %s share the comment %q", long, other, c)
		}
	}

	// Shortened comments parse as a name whose comment is themselves, and
	// resolve to the full name among known ones (same protocol only).
	short, err := parsePortName(c, model.ProtocolTCP)
	if err != nil || short.String() != c || elemComment(short) != c {
		t.Errorf("comment %q parses as %v (%v), which comments as %q", c, short, err, elemComment(short))
	}
	pn := portNames{}
	pn.add(long)
	pn.add(model.ServicePortName{Namespace: "default", Name: "web", Port: "http"})
	if len(pn) != 1 || pn.name(short) != long {
		t.Errorf("resolver %v: %v resolves to %v, want %v", pn, short, pn.name(short), long)
	}
	if udp := (model.ServicePortName{Namespace: short.Namespace, Name: short.Name, Port: short.Port, Protocol: model.ProtocolUDP}); pn.name(udp) != udp {
		t.Errorf("the UDP port %v resolves to %v", udp, pn.name(udp))
	}

	// Whatever the name, the comment fits, is valid UTF-8 and parses.
	for _, n := range []model.ServicePortName{
		{Namespace: strings.Repeat("n", 300), Name: strings.Repeat("s", 300)},
		{Namespace: "a", Name: "b", Port: strings.Repeat("p", 500)},
		{Namespace: strings.Repeat("é", 80), Name: strings.Repeat("名", 50), Port: strings.Repeat("ü", 20)},
	} {
		c := elemComment(n)
		if len(c) > maxComment || !utf8.ValidString(c) {
			t.Errorf("elemComment of a %d-byte name = %q (%d bytes)", len(n.String()), c, len(c))
		}
		if p, err := parsePortName(c, ""); err != nil || elemComment(p) != c {
			t.Errorf("comment %q parses as %v (%v)", c, p, err)
		}
	}
}
