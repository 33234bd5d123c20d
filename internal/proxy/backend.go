package proxy

import "context"

// Backend programs a Desired snapshot into the kernel in one proxy mode.
// Sync renders the whole desired state and applies the difference: it is
// safe to call again with the same input, may use Desired.Changed to touch
// only what changed, and must leave the previous rules in place when it
// fails. Cleanup removes everything the backend ever programmed, also when
// a previous process of another mode programmed it.
type Backend interface {
	// Mode is the proxy mode's name: nftables, iptables or ipvs.
	Mode() string
	Sync(ctx context.Context, d *Desired) error
	Cleanup(ctx context.Context) error
}
