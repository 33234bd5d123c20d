package nftables

import (
	"context"
	"fmt"

	"github.com/kdive/kdive/internal/kernel/nft"
)

// Cleanup deletes the table and everything in it; a missing table is not
// an error. Nothing outside the table is touched.
func (p *Proxier) Cleanup(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cur = nil
	if c, ok := p.conn.(*nft.Conn); ok {
		c.Close()
	}
	// Adding first makes the delete succeed when the table is missing,
	// in the same atomic transaction.
	tx := nft.NewTransaction(nftTable)
	tx.Add(&nft.Table{})
	tx.Delete(&nft.Table{})
	if err := p.run(ctx, tx); err != nil {
		return fmt.Errorf("cleanup table %s: %w", nftTable, err)
	}
	return nil
}
