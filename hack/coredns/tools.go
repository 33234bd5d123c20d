//go:build tools

// This module exists only to build CoreDNS, at a released version and with
// its default plugin set, for the lab clusters' DNS image (make images). It
// is a module of its own so that CoreDNS's dependencies never move those of
// the other builds.
package tools

import _ "github.com/coredns/coredns"
