package nftables

import (
	"context"

	"github.com/kdive/kdive/internal/kernel/nft"
)

// fakeNft is the nft door's Fake standing for the namespace's nftables,
// for tests without root, recording what the proxier sent.
type fakeNft struct {
	*nft.Fake
	// scripts are the transactions sent, as nft scripts; ops how many
	// operations each had.
	scripts []string
	ops     []int
	// fail, when set, makes the next transaction fail (and is cleared).
	fail error
}

func newFakeNft() *fakeNft { return &fakeNft{Fake: nft.NewFake()} }

func (f *fakeNft) run(ctx context.Context, tx *nft.Transaction) error {
	f.scripts = append(f.scripts, tx.String())
	f.ops = append(f.ops, tx.Len())
	if err := f.fail; err != nil {
		f.fail = nil
		return err
	}
	return f.Fake.Run(ctx, tx)
}

// Dump is the fake's table, or "<no table>".
func (f *fakeNft) Dump() string {
	if d := f.Fake.Dump(nftTable); d != "" {
		return d
	}
	return "<no table>"
}

// fresh is the table a fresh load of rs gives.
func fresh(rs *Ruleset) string {
	f := newFakeNft()
	if err := f.run(context.Background(), (&Transaction{Replace: rs}).nft()); err != nil {
		panic(err)
	}
	return f.Dump()
}
