package nft

import (
	"context"
	"errors"
	"strings"
	"testing"
)

func TestFakeAtomic(t *testing.T) {
	ctx := context.Background()
	f := NewFake()
	if err := f.Run(ctx, example()); err != nil {
		t.Fatal(err)
	}
	before := f.Dump(testTable)
	g0, _ := f.Generation()
	// The second operation fails: the first must not stay.
	tx := NewTransaction(testTable)
	tx.Add(&Element{Set: "nets", Key: []string{"192.168.0.0/16"}})
	tx.Label("ns/b:dns")
	tx.Delete(&Element{Map: "vips", Key: []string{"10.96.0.9", "udp", "53"}})
	err := f.Run(ctx, tx)
	var nerr *Error
	if !errors.As(err, &nerr) || len(nerr.Labels) != 1 || nerr.Labels[0] != "ns/b:dns" {
		t.Fatalf("Run = %v, want an *Error labelled ns/b:dns", err)
	}
	if got := f.Dump(testTable); got != before {
		t.Errorf("a refused transaction changed the table:\n%s\nwas:\n%s", got, before)
	}
	if g, _ := f.Generation(); g != g0 {
		t.Errorf("generation %d after a refused transaction, want %d", g, g0)
	}
	for name, tx := range map[string]func(*Transaction){
		"element of a missing set": func(tx *Transaction) { tx.Add(&Element{Set: "nope", Key: []string{"1.2.3.4"}}) },
		"element added with a new value": func(tx *Transaction) {
			tx.Add(&Element{Map: "vips", Key: []string{"10.96.0.1", "udp", "53"}, Value: []string{"drop"}})
		},
		"chain created twice":     func(tx *Transaction) { tx.Create(&Chain{Name: "svc"}) },
		"non-empty chain deleted": func(tx *Transaction) { tx.Delete(&Chain{Name: "svc"}) },
		"rule of a missing chain": func(tx *Transaction) { tx.Add(&Rule{Chain: "nope", Rule: "accept"}) },
		"missing rule deleted":    func(tx *Transaction) { tx.Delete(&Rule{Chain: "svc", Handle: 99}) },
	} {
		x := NewTransaction(testTable)
		tx(x)
		if err := f.Run(ctx, x); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// A chain a map element or rule jumps to cannot go, as in the kernel.
	busy := NewTransaction(testTable)
	busy.Flush(&Chain{Name: "svc"})
	busy.Delete(&Chain{Name: "svc"})
	if err := f.Run(ctx, busy); err == nil {
		t.Errorf("deleting chain svc while vips' elements go to it was accepted")
	}
	// What the kernel accepts, the fake does too.
	ok := NewTransaction(testTable)
	ok.Add(&Element{Map: "vips", Key: []string{"10.96.0.1", "udp", "53"}, Value: []string{"goto svc"}}) // again, same value
	ok.Flush(&Map{Name: "vips"})
	ok.Flush(&Chain{Name: "svc"})
	ok.Delete(&Chain{Name: "svc"})
	if err := f.Run(ctx, ok); err != nil {
		t.Fatal(err)
	}
	gone := NewTransaction(testTable)
	gone.Add(&Table{})
	gone.Delete(&Table{})
	if err := f.Run(ctx, gone); err != nil {
		t.Fatal(err)
	}
	if f.Dump(testTable) != "" {
		t.Errorf("table still there after add+delete")
	}
}

func TestFakeListNotFound(t *testing.T) {
	if _, err := NewFake().List(context.Background(), testTable); !errors.Is(err, ErrNotFound) {
		t.Errorf("List of a missing table = %v, want ErrNotFound", err)
	}
	f := NewFake()
	if err := f.Run(context.Background(), example()); err != nil {
		t.Fatal(err)
	}
	l, err := f.List(context.Background(), testTable)
	if err != nil {
		t.Fatal(err)
	}
	if m := l.Map("vips"); m == nil || len(m.Elements) != 2 || strings.Join(m.Elements[0].Value, "") != "goto svc" {
		t.Errorf("vips = %+v", m)
	}
}
