package xtables

import (
	"context"
	"os/exec"
	"strings"
	"testing"

	"github.com/kdive/kdive/internal/kernel/ktest"
)

// TestCommentsThroughRestore gives iptables-restore, in both flavours, a
// rule whose comment holds what would break its input unescaped (quotes,
// backslashes, an option after a quote, a newline and a COMMIT), and
// requires the kernel to hold that one rule, with the comment iptables-save
// prints and ParseRule reads back as the one written (the newline as '?').
func TestCommentsThroughRestore(t *testing.T) {
	ktest.RequireRoot(t)
	const comment = "x\" -j ACCEPT \\ \"y\"\nCOMMIT\n"
	want := strings.ReplaceAll(comment, "\n", "?")
	for _, f := range []Flavour{NFT, Legacy} {
		t.Run(string(f), func(t *testing.T) {
			if _, err := exec.LookPath(f.Restore()); err != nil {
				t.Skipf("%s not installed", f.Restore())
			}
			ns := ktest.NewNetNS(t)
			ctx := context.Background()
			r := Rule{Comment: comment, Proto: "tcp", DPort: 80, Jump: "KUBE-X"}
			in := "*nat\n:KUBE-X - [0:0]\n:KUBE-Y - [0:0]\n-A KUBE-Y " + r.String() + "\nCOMMIT\n"
			if out, err := ns.Run(ctx, in, f.Restore(), "--noflush"); err != nil {
				t.Fatalf("%s refused %q: %v %s", f.Restore(), in, err, out)
			}
			saved, err := ns.Run(ctx, "", f.Save(), "-t", "nat")
			if err != nil {
				t.Fatal(err)
			}
			lines := ParseSave(saved)["nat"].Rules["KUBE-Y"]
			if len(lines) != 1 {
				t.Fatalf("KUBE-Y holds %d rules, want 1:\n%s", len(lines), saved)
			}
			got, err := ParseRule(lines[0])
			if err != nil {
				t.Fatalf("iptables-save's %q: %v", lines[0], err)
			}
			if got.Comment != want || got.Jump != "KUBE-X" || got.DPort != 80 {
				t.Errorf("the kernel holds comment %q jump %s port %d, want comment %q jump KUBE-X port 80 (saved: %s)", got.Comment, got.Jump, got.DPort, want, lines[0])
			}
		})
	}
}
