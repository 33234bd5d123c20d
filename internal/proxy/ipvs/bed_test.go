package ipvs_test

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/ktest"
	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy/proxytest"
	"github.com/kdive/kdive/internal/proxy/proxytest/bed"
)

// newBed is the proxy modes' test bed (package bed has the address plan)
// with what the IPVS mode needs of the kernel.
func newBed(t *testing.T) *bed.Bed {
	t.Helper()
	ktest.RequireFeature(t, kernel.FeatureIPVS)
	ktest.RequireFeature(t, kernel.FeatureDummy)
	return bed.New(t)
}

// The bed's pods the tests here name: three endpoints (whose NodeName a
// test chooses, to exercise the traffic policies) and a client.
const (
	podA, podB, podC = "10.0.1.2", "10.0.1.3", "10.0.1.4"
	within           = 3 * time.Second
)

var client, nodeIP = proxytest.LocalPod, bed.NodeIP

func ep(pod string, nodeName string) model.Endpoint { return bed.EP(pod, 8080, nodeName) }

func svc(name, clusterIP string, eps ...model.Endpoint) model.ServicePort {
	return bed.Service(name, clusterIP, 80, model.ProtocolTCP, eps...)
}

var desired = bed.Desired

// once asks addr once from the client pod.
func once(b *bed.Bed, addr string) (bed.Answer, error) {
	return bed.Once(b.NS(client), client, "tcp", addr, within)
}

// diagnose describes the node when traffic fails: whether each pod answers
// directly, the node's neighbours and its IPVS table with counters.
func diagnose(t *testing.T, b *bed.Bed) string {
	var out strings.Builder
	for _, pod := range []string{podA, podB, podC} {
		a, err := bed.Once(b.Node, netip.Addr{}, "tcp", pod+":8080", within)
		fmt.Fprintf(&out, "node -> %s directly: %s %v\n", pod, a, err)
	}
	for _, cmd := range [][]string{{"ip", "neigh"}, {"ipvsadm", "-Ln", "--stats"}, {"ipvsadm", "-Lnc"}} {
		o, err := b.Node.Run(t.Context(), "", cmd[0], cmd[1:]...)
		fmt.Fprintf(&out, "$ %s (%v)\n%s", strings.Join(cmd, " "), err, o)
	}
	return out.String()
}
