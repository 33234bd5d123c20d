package iptables

import (
	"context"
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"github.com/kdive/kdive/internal/xtables"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/ktest"
	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy"
	"github.com/kdive/kdive/internal/proxy/proxytest"
)

// Helpers shared by the tests. Real-kernel tests run as root in network
// namespaces they create (ktest.NewNetNS) and skip otherwise.

// requireFlavour skips (fails in the test VM) when the flavour's tools or
// kernel support are missing.
func requireFlavour(t testing.TB, f Flavour) {
	t.Helper()
	ktest.RequireRoot(t)
	skip := t.Skipf
	if ktest.InVM() {
		skip = t.Fatalf
	}
	if _, err := exec.LookPath(f.Restore()); err != nil {
		skip("%s is not installed: %v", f.Restore(), err)
	}
	flavourOnce.Do(func() {
		for _, f := range xtables.Flavours {
			flavourErr[f] = probeFlavour(f)
		}
	})
	if err := flavourErr[f]; err != nil {
		skip("iptables %s does not work here: %v", f, err)
	}
}

var (
	flavourOnce sync.Once
	flavourErr  = map[Flavour]error{}
)

func probeFlavour(f Flavour) error {
	ns, err := kernel.CreateNetNS("kdive-iptprobe-" + string(f))
	if err != nil {
		return err
	}
	defer func() {
		ns.Close()
		_ = kernel.DeleteNetNS("kdive-iptprobe-" + string(f))
	}()
	_, err = ns.Run(context.Background(), "*nat\n:KDIVE-PROBE - [0:0]\n-A KDIVE-PROBE -m statistic --mode random --probability 0.5 -p tcp -j DNAT --to-destination 10.0.0.1:80\nCOMMIT\n", f.Restore(), "-w", "--noflush")
	return err
}

// kernelProxier is a Proxier on a fresh namespace that records every
// iptables-restore input it sends.
type kernelProxier struct {
	*Proxier
	ns       *kernel.NetNS
	mu       sync.Mutex
	restores []string
}

func newKernelProxier(t testing.TB, f Flavour) *kernelProxier {
	t.Helper()
	requireFlavour(t, f)
	ns := ktest.NewNetNS(t)
	kp := &kernelProxier{Proxier: New(Options{NetNS: ns, Flavour: f}), ns: ns}
	run := kp.run
	kp.run = func(ctx context.Context, stdin, name string, args ...string) (string, error) {
		if strings.HasSuffix(name, "-restore") && !isListing(stdin) {
			kp.mu.Lock()
			kp.restores = append(kp.restores, stdin)
			kp.mu.Unlock()
		}
		return run(ctx, stdin, name, args...)
	}
	return kp
}

// sent returns and forgets the restore inputs sent so far.
func (kp *kernelProxier) sent() []string {
	kp.mu.Lock()
	defer kp.mu.Unlock()
	s := kp.restores
	kp.restores = nil
	return s
}

// iptables runs the flavour's iptables tool ("": iptables itself, "save")
// in the namespace.
func iptables(t testing.TB, ns *kernel.NetNS, f Flavour, kind string, args ...string) string {
	t.Helper()
	tool := "iptables-" + string(f)
	if kind == "save" {
		tool = f.Save()
	}
	out, err := ns.Run(context.Background(), "", tool, args...)
	if err != nil {
		t.Fatalf("%s %s: %v", tool, strings.Join(args, " "), err)
	}
	return out
}

// chainsIn lists the chains in a table's iptables-save output.
func chainsIn(t testing.TB, ns *kernel.NetNS, f Flavour, table Table) map[string]bool {
	t.Helper()
	st := parseSave(iptables(t, ns, f, "save", "-t", string(table)))[table]
	chains := map[string]bool{}
	if st != nil {
		for _, c := range st.Order {
			chains[c] = true
		}
	}
	return chains
}

// withEndpoints is d with one port's endpoints replaced (and Changed
// naming only it).
func withEndpoints(d *proxy.Desired, name string, eps ...model.Endpoint) *proxy.Desired {
	out := *d
	out.Services = nil
	out.Changed = map[model.ServicePortName]bool{}
	for _, p := range d.Services {
		if p.Name.String() == name {
			sp := p.ServicePort
			sp.Endpoints = eps
			p = proxy.Resolve(sp, d.Node)
			out.Changed[p.Name] = true
		}
		out.Services = append(out.Services, p)
	}
	return &out
}

// without is d without one port (and Changed naming it).
func without(d *proxy.Desired, name string) *proxy.Desired {
	out := *d
	out.Services = nil
	out.Changed = map[model.ServicePortName]bool{}
	for _, p := range d.Services {
		if p.Name.String() == name {
			out.Changed[p.Name] = true
			continue
		}
		out.Services = append(out.Services, p)
	}
	return &out
}

// unchanged is d with an empty Changed: a partial Sync with nothing new.
func unchanged(d *proxy.Desired) *proxy.Desired {
	out := *d
	out.Changed = map[model.ServicePortName]bool{}
	return &out
}

func port(d *proxy.Desired, name string) *proxy.Port {
	for _, p := range d.Services {
		if p.Name.String() == name {
			return p
		}
	}
	panic("no port " + name)
}

// scaleDesired is n services with eps endpoints each (10.96.0.0/12 cluster
// IPs, pods in 10.64.0.0/10), as the benchmark has them.
func scaleDesired(n, eps int) *proxy.Desired {
	node := model.Node{Name: "node-1", IPs: []netip.Addr{netip.MustParseAddr("172.20.1.10")}}
	cfg := proxy.Config{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.64.0.0/10")}}
	d := proxy.NewDesired(cfg, node)
	for i := 0; i < n; i++ {
		sp := model.ServicePort{
			Name:       model.ServicePortName{Namespace: fmt.Sprintf("ns%d", i%100), Name: fmt.Sprintf("svc%d", i), Port: "http", Protocol: model.ProtocolTCP},
			ClusterIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, byte(96 + i>>16), byte(i >> 8), byte(i)})},
			Port:       80,
		}
		for e := 0; e < eps; e++ {
			k := i*eps + e
			sp.Endpoints = append(sp.Endpoints, model.Endpoint{
				IP: netip.AddrFrom4([4]byte{10, byte(64 + k>>16), byte(k >> 8), byte(k)}), Port: 8080,
				NodeName: fmt.Sprintf("node-%d", k%50), Ready: true, Serving: true,
			})
		}
		d.Services = append(d.Services, proxy.Resolve(sp, node))
	}
	slices.SortFunc(d.Services, func(a, b *proxy.Port) int { return strings.Compare(a.Name.String(), b.Name.String()) })
	return d
}

// fixture is the case table's services.
func fixture() *proxy.Desired { return proxytest.Fixture() }

func netipAP(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// isListing says a restore input only lists chains (the canary check).
func isListing(stdin string) bool {
	for _, l := range strings.Split(stdin, "\n") {
		if l != "" && l != "COMMIT" && !strings.HasPrefix(l, "*") && !strings.HasPrefix(l, "-S ") {
			return false
		}
	}
	return true
}

// endpointChainName is upstream's KUBE-SEP name, as upstream computes it.
func endpointChainName(portName, proto, endpoint string) string {
	h := sha256.Sum256([]byte(portName + proto + endpoint))
	return prefixSEP + base32.StdEncoding.EncodeToString(h[:])[:16]
}

// isOurs says whether a chain name is one kdive creates, in any table.
func isOurs(name string) bool {
	for _, t := range tables {
		if ownedIn(t, name) {
			return true
		}
	}
	return false
}

func isChainTarget(j string) bool {
	switch j {
	case "", targetAccept, targetDrop, targetReject, targetReturn, targetDNAT, targetMark, targetMasquerade:
		return false
	}
	return true
}
