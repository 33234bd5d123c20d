package iptables

import (
	"strings"
	"testing"

	"github.com/kdive/kdive/internal/proxy/proxytest/bed"
	"github.com/kdive/kdive/internal/xtables"
)

// TestTraffic sends the case table's packets through the rules as real
// connections (package bed has the address plan), in both flavours.
func TestTraffic(t *testing.T) {
	for _, f := range xtables.Flavours {
		t.Run(string(f), func(t *testing.T) {
			t.Parallel()
			requireFlavour(t, f)
			b := bed.New(t)
			b.Run(t, New(Options{NetNS: b.Node, Flavour: f}))
			// The DROP rule itself counted the dropped case (unmatched
			// service traffic would time out too, unanswered upstream).
			counted := false
			for _, line := range strings.Split(iptables(t, b.Node, f, "save", "-c", "-t", "filter"), "\n") {
				if strings.Contains(line, "10.1.0.6/32") && strings.HasSuffix(line, "-j DROP") {
					counted = !strings.HasPrefix(line, "[0:")
				}
			}
			if !counted {
				t.Error("the DROP rule for 10.1.0.6 (iTP Local, no local endpoint) counted no packet")
			}
		})
	}
}
