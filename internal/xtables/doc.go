// Package xtables is how kdive speaks iptables, for every mode that
// writes iptables rules (the iptables mode's whole ruleset, the IPVS
// mode's firewall and masquerading): which of the two iptables a node
// uses (Flavour: iptables-nft or iptables-legacy, the two multi-call
// binaries xtables-nft-multi and xtables-legacy-multi), how to detect it
// as upstream's iptables wrapper does, and iptables-save and
// iptables-restore of a flavour; and the rules themselves (Rule): typed
// matches and target, printed as iptables-save prints them (and as
// upstream kube-proxy writes them, for the iptables mode), read back from
// iptables-save, and judged against a packet for the modes' tracers. It
// holds no policy: which chains and rules are kdive's is the caller's to
// say.
package xtables
