// Package nft is kdive's one door to nftables: every table kdive programs
// (the service proxy's, the hostPort table, the NAT-outgoing table, the
// lab router's) is changed through a Transaction and read back through a
// Listing here; nothing else runs `nft` or decodes its JSON.
//
//   - A Transaction is typed: tables, chains, sets, maps, elements, rules
//     and counters of one table, each added, created, deleted or flushed.
//     It is built anywhere (no kernel needed) and applied in one place,
//     atomically: all of it or nothing. Label names the caller's object
//     (a service port) the next operations are for, so that when nft
//     refuses a command the *Error says whose it was.
//   - A Conn applies transactions in one network namespace: with `nft -f`
//     (one process per transaction), or, WithSession, through one
//     long-running `nft -i` (a change then costs a fraction of a
//     millisecond instead of a process start); a big transaction, or one
//     that creates or deletes the table, always goes through `nft -f`,
//     where element runs are written as blocks nft parses faster.
//   - List reads a table back (`nft -j list table`) into a Listing of
//     typed objects; a table that does not exist is an error wrapping
//     ErrNotFound, never a message to match. Rules carry their
//     expressions as nft's JSON for callers that interpret them.
//   - Generation is the namespace's nftables generation, read over a
//     netlink socket the Conn keeps open (closing one after a transaction
//     that deleted something waits for the kernel: see Conn.Generation).
//   - Fake is an in-memory Interface for unit tests: it keeps the objects
//     of each table, applies a transaction to a copy and keeps the copy
//     only when every operation succeeded, refusing what the kernel
//     refuses (a missing table, chain, set or element; a chain or set
//     created twice; an element added twice with another value).
//
// The bridge guard (PortGuard) and HasTable speak netlink through
// github.com/google/nftables instead of running nft, so that a node
// without the nft binary still guards its bridge ports; the guard's table
// never changes shape, only its sets' elements.
package nft
