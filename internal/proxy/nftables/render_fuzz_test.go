package nftables

import (
	"context"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/nft"
	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy"
)

// fuzzBytes hands out the fuzzer's bytes; past the end it gives zeros, so
// every input makes some Desired.
type fuzzBytes struct {
	b []byte
	i int
}

func (f *fuzzBytes) next() byte {
	if f.i >= len(f.b) {
		return 0
	}
	f.i++
	return f.b[f.i-1]
}

// n is a number in [0, max).
func (f *fuzzBytes) n(max int) int { return int(f.next()) % max }

func (f *fuzzBytes) bit() bool { return f.next()&1 == 1 }

func (f *fuzzBytes) pick(from ...string) string { return from[f.n(len(from))] }

// addr is one of a few addresses of base, so that services and endpoints
// sometimes share one (which the API server would refuse between
// services, but the proxy must survive).
func (f *fuzzBytes) addr(base string, spread int) netip.Addr {
	b := netip.MustParseAddr(base).As4()
	b[3] += byte(f.n(spread))
	return netip.AddrFrom4(b)
}

var fuzzPorts = []int{80, 443, 53, 1, 65535, 8080}

// fuzzDesired makes a small node snapshot from the bytes: up to six
// service ports with valid but random ports, addresses, endpoints,
// affinity and traffic policies, shared addresses and node ports included.
func fuzzDesired(fb *fuzzBytes) *proxy.Desired {
	node := model.Node{Name: "node-0", Zone: fb.pick("", "zone-a"), IPs: []netip.Addr{netip.MustParseAddr("172.20.1.10")}}
	if fb.bit() {
		node.IPs = append(node.IPs, netip.MustParseAddr("192.168.5.10"))
	}
	cfg := proxy.Config{MasqueradeAll: fb.bit(), LocalhostNodePorts: fb.bit()}
	for range fb.n(3) {
		cfg.ClusterCIDRs = append(cfg.ClusterCIDRs, netip.MustParsePrefix(fb.pick("10.0.0.0/16", "10.0.0.0/8", "10.0.1.0/24", "192.168.0.0/16")))
	}
	if fb.bit() {
		cfg.NodePortAddresses = []netip.Prefix{netip.MustParsePrefix(fb.pick("172.20.0.0/16", "192.168.5.0/24", "0.0.0.0/0"))}
	}
	d := proxy.NewDesired(cfg, node)
	seen := map[model.ServicePortName]bool{}
	for range 1 + fb.n(6) {
		sp := model.ServicePort{
			Name: model.ServicePortName{
				Namespace: fb.pick("default", "kube-system"), Name: fb.pick("web", "dns", "a-very-long-service-name-for-chains", "x"),
				Port: fb.pick("", "http", "dns-tcp"), Protocol: model.Protocol(fb.pick("TCP", "UDP", "SCTP")),
			},
			ClusterIPs: []netip.Addr{fb.addr("10.96.0.1", 4)},
			Port:       fuzzPorts[fb.n(len(fuzzPorts))],
		}
		if seen[sp.Name] {
			continue // the tracker never gives one name twice
		}
		seen[sp.Name] = true
		if fb.bit() {
			sp.NodePort = 30000 + fb.n(3)
		}
		for range fb.n(3) {
			sp.ExternalIPs = append(sp.ExternalIPs, fb.addr("192.0.2.10", 3))
		}
		for range fb.n(3) {
			sp.LoadBalancerIPs = append(sp.LoadBalancerIPs, fb.addr("203.0.113.10", 3))
		}
		for range fb.n(3) {
			sp.LoadBalancerSourceRanges = append(sp.LoadBalancerSourceRanges,
				netip.MustParsePrefix(fb.pick("198.51.100.0/24", "198.51.100.7/32", "0.0.0.0/0", "172.20.0.0/16", "198.51.0.0/16")))
		}
		// As the tracker gives them (proxy.ServicePorts): outermost ranges,
		// sorted. (Nested ones would be merged by the kernel's interval set
		// and read back as another rule.)
		sp.LoadBalancerSourceRanges = disjoint(sp.LoadBalancerSourceRanges)
		if fb.bit() {
			sp.AffinityTimeout = fb.pick2(1, 10800, 86400)
		}
		sp.ExternalPolicyLocal, sp.InternalPolicyLocal, sp.PreferClose = fb.bit(), fb.bit(), fb.bit()
		if sp.ExternalPolicyLocal && fb.bit() {
			sp.HealthCheckNodePort = 32000 + fb.n(2)
		}
		eps := fb.n(9)
		if fb.n(16) == 0 {
			eps = 300 // now and then a big one
		}
		for j := range eps {
			e := model.Endpoint{
				IP:   netip.AddrFrom4([4]byte{10, 0, byte(1 + j>>8), byte(2 + j)}),
				Port: fuzzPorts[fb.n(len(fuzzPorts))], NodeName: fb.pick("node-0", "node-1"),
				Ready: fb.bit(), Serving: fb.bit(), Terminating: fb.bit(),
			}
			if eps < 300 {
				e.IP = fb.addr("10.0.1.2", 6) // duplicates within a port too
			}
			if fb.bit() {
				e.ZoneHints = []string{fb.pick("zone-a", "zone-b")}
			}
			sp.Endpoints = append(sp.Endpoints, e)
		}
		d.Services = append(d.Services, proxy.Resolve(sp, node))
	}
	slices.SortFunc(d.Services, func(a, b *proxy.Port) int { return strings.Compare(a.Name.String(), b.Name.String()) })
	return d
}

func (f *fuzzBytes) pick2(from ...int) int { return from[f.n(len(from))] }

// fuzzNetNS is the throwaway namespace of one fuzz worker process, or nil
// without root or nftables (the kernel checks are then skipped). It is
// named after the worker's pid: a worker the fuzzer kills (when an input
// fails) cannot clean up, so each new worker first deletes the namespaces
// of workers no longer running.
func fuzzNetNS(f *testing.F) *kernel.NetNS {
	if os.Geteuid() != 0 || kernel.Probe(kernel.FeatureNFTables) != nil {
		return nil
	}
	const prefix = "kdive-fuzz-"
	stale, _ := kernel.ListNetNS(prefix)
	for _, n := range stale {
		if pid, err := strconv.Atoi(strings.TrimPrefix(n, prefix)); err == nil && unix.Kill(pid, 0) == unix.ESRCH {
			_ = kernel.DeleteNetNS(n) // another worker may be deleting it too
		}
	}
	name := prefix + strconv.Itoa(os.Getpid())
	_ = kernel.DeleteNetNS(name) // a pid reused
	ns, err := kernel.CreateNetNS(name)
	if err != nil {
		f.Fatalf("create the fuzz namespace: %v", err)
	}
	f.Cleanup(func() {
		ns.Close()
		if err := kernel.DeleteNetNS(name); err != nil {
			f.Errorf("delete the fuzz namespace: %v", err)
		}
	})
	return ns
}

// FuzzRenderAccepted renders two snapshots made from the fuzzer's bytes
// and checks: Render is pure; the incremental transaction from the first
// to the second gives the same table as loading the second fresh (on the
// fake nft); and, as root, in a throwaway namespace, the kernel's nft
// accepts the full script (`nft --check`), applies the first table and
// then the incremental transaction, and lists back (nft -j, parsed by
// Inspect's reader) exactly the ruleset Render made.
func FuzzRenderAccepted(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte("\x01\x01\x01\x02\x05\x03\x01\x00\x02\x01\x01\x02\x02\x02\x03\x01\x01\x01\x04\x05\x06\x07\x08"))
	f.Add([]byte(strings.Repeat("\xff\x03\x07\x01", 40)))
	f.Add([]byte(strings.Repeat("\x05\x02\x01\x00\x01\x01\x01\x01\x01\x01\x01\x01\x0f\x00", 30)))
	f.Add([]byte(strings.Repeat("k8s-dataplane", 20)))
	ns := fuzzNetNS(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		fb := &fuzzBytes{b: data}
		d1, d2 := fuzzDesired(fb), fuzzDesired(fb)
		d2.Node, d2.Config, d2.NodePortIPs = d1.Node, d1.Config, d1.NodePortIPs // an incremental change
		rs1 := Render(d1)
		script := (&Transaction{Replace: rs1}).String()
		if rs1.String() != Render(d1).String() {
			t.Fatal("Render is not pure: two renders of one snapshot differ")
		}
		want := Render(d2)

		p, fake := fakeProxier()
		mustSync(t, p, d1)
		mustSync(t, p, d2)
		checkTable(t, p, fake, d2)
		if ns == nil {
			return
		}
		ctx := context.Background()
		if _, err := ns.Run(ctx, script, "nft", "--check", "-f", "-"); err != nil {
			t.Fatalf("nft --check refuses the rendered table: %v\n%s", err, script)
		}
		kp := New(Options{NetNS: ns})
		defer kp.Close()
		if err := kp.Sync(ctx, d1); err != nil {
			t.Fatalf("sync the first snapshot: %v\n%s", err, script)
		}
		if err := kp.Sync(ctx, d2); err != nil {
			t.Fatalf("sync the second snapshot incrementally: %v", err)
		}
		js, err := nft.New(ns).ListJSON(ctx, nftTable)
		if err != nil {
			t.Fatal(err)
		}
		l, err := parseListing(js)
		if err != nil {
			t.Fatalf("reading the table back: %v", err)
		}
		if got, w := l.rs.String(), want.String(); got != w {
			t.Fatalf("the kernel holds another table than Render's:\n%s", lineDiff(got, w))
		}
	})
}
