package nftables

import (
	"context"

	"github.com/kdive/kdive/internal/kernel/nft"
)

// apply applies a transaction to the namespace's table.
func (p *Proxier) apply(ctx context.Context, tx *nft.Transaction) error {
	if p.conn == nil {
		return errNoNetNS
	}
	return p.conn.Run(ctx, tx)
}

// generation is the namespace's nftables generation.
func (p *Proxier) generation() (uint32, error) {
	if p.conn == nil {
		return 0, errNoNetNS
	}
	return p.conn.Generation()
}
