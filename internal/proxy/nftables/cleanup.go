package nftables

import (
	"context"
	"fmt"
)

// Cleanup deletes the table and everything in it; a missing table is not
// an error. Nothing outside the table is touched.
func (p *Proxier) Cleanup(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cur = nil
	if p.session != nil {
		p.session.Close()
	}
	tbl := Family + " " + Table
	// Adding first makes the delete succeed when the table is missing,
	// in the same atomic transaction.
	if err := p.nft(ctx, "add table "+tbl+"\ndelete table "+tbl+"\n"); err != nil {
		return fmt.Errorf("cleanup table %s: %w", tbl, err)
	}
	return nil
}
