package nft

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/ktest"
)

// summary is a listing as both the kernel and the Fake report it: what
// Run wrote, without what only one of them knows (rule text and handles,
// the kernel's numeric priorities) or what nft 1.0.6's JSON leaves out (a
// table's comment, a set's dynamic flag), elements sorted.
func summary(l *Listing) string {
	var b strings.Builder
	fmt.Fprintf(&b, "table %s\n", l.Table)
	elems := func(es []Element) {
		var lines []string
		for _, e := range es {
			lines = append(lines, fmt.Sprintf("\t%q %q %q\n", e.Key, e.Value, e.Comment))
		}
		slices.Sort(lines)
		b.WriteString(strings.Join(lines, ""))
	}
	for _, c := range l.Chains {
		fmt.Fprintf(&b, "chain %s %s %s\n", c.Name, c.Type, c.Hook)
	}
	for _, s := range l.Sets {
		flags := slices.DeleteFunc(slices.Clone(s.Flags), func(f string) bool { return f == "dynamic" })
		fmt.Fprintf(&b, "set %s %s %v %v\n", s.Name, s.Type, flags, s.Timeout)
		elems(s.Elements)
	}
	for _, m := range l.Maps {
		fmt.Fprintf(&b, "map %s %s\n", m.Name, m.Type)
		elems(m.Elements)
	}
	for _, r := range l.Rules {
		fmt.Fprintf(&b, "rule of %s comment %q\n", r.Chain, r.Comment)
	}
	for _, c := range l.Counters {
		fmt.Fprintf(&b, "counter %s\n", c.Name)
	}
	return b.String()
}

// TestConnAgreesWithFake applies the same transactions to the kernel and
// to the Fake and reads both back: the Fake is only worth its tests while
// it keeps what the kernel keeps and refuses what it refuses.
func TestConnAgreesWithFake(t *testing.T) {
	ktest.RequireFeature(t, kernel.FeatureNFTables)
	ctx := context.Background()
	for _, session := range []bool{false, true} {
		t.Run(fmt.Sprintf("session=%v", session), func(t *testing.T) {
			var opts []Option
			if session {
				opts = append(opts, WithSession())
			}
			c := New(ktest.NewNetNS(t), opts...)
			t.Cleanup(func() { c.Close() })
			f := NewFake()
			if _, err := c.List(ctx, testTable); !errors.Is(err, ErrNotFound) {
				t.Fatalf("List before any Run = %v, want ErrNotFound", err)
			}
			g0, err := c.Generation()
			must(t, err)
			steps := []struct {
				tx     *Transaction
				refuse bool
			}{
				{tx: example()},
				{tx: func() *Transaction { // incremental: through the session when there is one
					tx := NewTransaction(testTable)
					tx.Delete(&Element{Map: "vips", Key: []string{"10.96.0.1", "udp", "53"}})
					tx.Add(&Element{Map: "vips", Key: []string{"10.96.0.2", "sctp", "9"}, Value: []string{"drop"}})
					tx.Add(&Element{Set: "nets", Key: []string{"192.168.0.0/16"}})
					tx.Flush(&Chain{Name: "svc"})
					tx.Add(&Rule{Chain: "svc", Rule: "accept"})
					return tx
				}()},
				{tx: func() *Transaction { // the last operation is refused
					tx := NewTransaction(testTable)
					tx.Add(&Element{Set: "nets", Key: []string{"172.16.0.0/12"}})
					tx.Label("ns/x:p")
					tx.Add(&Rule{Chain: "nochain", Rule: "accept"})
					return tx
				}(), refuse: true},
				{tx: func() *Transaction { // an element again with another value
					tx := NewTransaction(testTable)
					tx.Label("ns/y:q")
					tx.Add(&Element{Map: "vips", Key: []string{"10.96.0.2", "sctp", "9"}, Value: []string{"accept"}})
					return tx
				}(), refuse: true},
			}
			for i, s := range steps {
				kerr, ferr := c.Run(ctx, s.tx), f.Run(ctx, s.tx)
				if (kerr != nil) != s.refuse || (ferr != nil) != s.refuse {
					t.Fatalf("step %d: kernel %v, fake %v; want refused %v", i, kerr, ferr, s.refuse)
				}
				if s.refuse {
					var kn, fn *Error
					if !errors.As(kerr, &kn) || !errors.As(ferr, &fn) || !slices.Equal(kn.Labels, fn.Labels) || len(kn.Labels) != 1 {
						t.Errorf("step %d: kernel %#v, fake %#v: want *Errors with the same one label", i, kerr, ferr)
					}
				}
				kl, err := c.List(ctx, testTable)
				must(t, err)
				fl, err := f.List(ctx, testTable)
				must(t, err)
				if k, f := summary(kl), summary(fl); k != f {
					t.Fatalf("step %d: the kernel holds\n%s\nthe fake\n%s", i, k, f)
				}
			}
			if g, err := c.Generation(); err != nil || g != g0+2 {
				t.Errorf("generation %d (%v) after two applied transactions, want %d", g, err, g0+2)
			}
			l, err := c.List(ctx, testTable)
			must(t, err)
			if c := l.Counter("hits"); c == nil {
				t.Errorf("counter hits not listed")
			}
			if len(l.Rules) != 2 || len(l.Rules[0].Expr) == 0 || l.Rules[0].Handle == 0 {
				t.Errorf("rules %+v: want two with expressions and handles", l.Rules)
			}
			if got := c.RuleText(ctx, testTable, "pre", l.Rules[0].Handle); !strings.Contains(got, "vmap @vips") {
				t.Errorf("RuleText = %q", got)
			}
		})
	}
}

// TestConnErrorLabelsInBlocks: a refused element in the middle of a big
// `nft -f` block is named by its own label.
func TestConnErrorLabelsInBlocks(t *testing.T) {
	ktest.RequireFeature(t, kernel.FeatureNFTables)
	ctx := context.Background()
	c := New(ktest.NewNetNS(t), WithSession())
	t.Cleanup(func() { c.Close() })
	must(t, c.Run(ctx, example()))
	tx := NewTransaction(testTable)
	for i := range maxSessionOps + 10 {
		tx.Label(fmt.Sprintf("ns/s%d:p", i))
		key := fmt.Sprintf("10.%d.%d.0/24", i/256, i%256)
		if i == 3000 {
			key = "10.0.0.0/33"
		}
		tx.Add(&Element{Set: "nets", Key: []string{key}})
	}
	err := c.Run(ctx, tx)
	var nerr *Error
	if !errors.As(err, &nerr) || !slices.Equal(nerr.Labels, []string{"ns/s3000:p"}) {
		t.Fatalf("Run = %v, want an *Error labelled ns/s3000:p", err)
	}
	l, err := c.List(ctx, testTable)
	must(t, err)
	if n := len(l.Set("nets").Elements); n != 1 {
		t.Errorf("nets has %d elements after a refused transaction, want 1", n)
	}
}
