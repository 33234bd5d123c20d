package iptables

import (
	"context"
	"encoding/json"
	"github.com/kdive/kdive/internal/xtables"
	"net/netip"
	"strings"
	"testing"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/ktest"
	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy"
	"github.com/kdive/kdive/internal/proxy/proxytest"
)

// savedText is what iptables-save -c would print for rs's nat and filter
// tables, every rule counted [1:60].
func savedText(rs *Ruleset) string {
	var b strings.Builder
	for _, t := range []Table{TableFilter, TableNAT} {
		b.WriteString("*" + string(t) + "\n")
		var cs []*Chain
		for _, c := range rs.Hooks {
			if c.Table == t {
				b.WriteString(":" + c.Name + " ACCEPT [0:0]\n")
				cs = append(cs, c)
			}
		}
		for _, c := range rs.Chains() {
			if c.Table == t {
				b.WriteString(":" + c.Name + " - [0:0]\n")
				cs = append(cs, c)
			}
		}
		for _, c := range cs {
			for i := range c.Rules {
				b.WriteString("[1:60] -A " + c.Name + string(c.Rules[i].AppendSave(nil)) + "\n")
			}
		}
		b.WriteString("COMMIT\n")
	}
	return b.String()
}

func compareLB(t *testing.T, in *Inspected, want *proxy.LBTable) {
	t.Helper()
	got := in.LB()
	if diffs := proxy.CompareLB(got, want); len(diffs) > 0 {
		js, _ := json.MarshalIndent(got, "", "  ")
		t.Errorf("LB differs from ExpectedLB:\n  %s\nread back:\n%s", strings.Join(diffs, "\n  "), js)
	}
}

// TestInspectRendered reads rendered rules back, as iptables-save prints
// them, without a kernel: the table, the case table, the counters, and a
// large cluster's rules without endpoint comments.
func TestInspectRendered(t *testing.T) {
	d := fixture()
	in, err := inspectSaved(FlavourNFT, savedText(Render(d)), d.Node.IPs)
	if err != nil {
		t.Fatal(err)
	}
	compareLB(t, in, proxy.ExpectedLB("iptables", d))
	if u := in.Unmapped(); len(u) > 0 {
		t.Errorf("unmapped chains: %v", u)
	}
	lb := in.LB()
	for name, want := range map[string]proxy.Counters{
		"default/web:http": {Packets: 3, Bytes: 180}, "default/affinity": {Packets: 4, Bytes: 240},
		"default/local": {Packets: 3, Bytes: 180}, // KUBE-SVC's 2 jumps, KUBE-SVL's 1
	} {
		s := lb.Service(port(d, name).Name)
		if s == nil || s.Counters == nil || *s.Counters != want {
			t.Errorf("%s: counters %+v, want %+v", name, s, want)
		}
	}
	if lb.Cluster == nil || lb.Cluster[0] != d.Config.ClusterCIDRs[0] || lb.MasqueradeAll {
		t.Errorf("cluster CIDRs %v, masquerade all %v", lb.Cluster, lb.MasqueradeAll)
	}
	proxytest.Run(t, func(t *testing.T, d *proxy.Desired, p proxytest.Packet) proxytest.Result {
		return in.Trace(p)
	})

	t.Run("config", func(t *testing.T) {
		d := fixture()
		d.Config.MasqueradeAll, d.Config.LocalhostNodePorts = true, true
		d.NodePortIPs = proxy.NodePortIPs(d.Config, d.Node)
		for i, q := range d.Services {
			if q.Name.String() == "default/local" {
				sp := q.ServicePort
				// The node is in the range: KUBE-FW lets the LB IP itself
				// in too, which is no source range.
				sp.LoadBalancerSourceRanges = []netip.Prefix{netip.MustParsePrefix("172.20.0.0/16"), netip.MustParsePrefix("192.0.2.0/24")}
				d.Services[i] = proxy.Resolve(sp, d.Node)
			}
		}
		in, err := inspectSaved(FlavourLegacy, savedText(Render(d)), d.Node.IPs)
		if err != nil {
			t.Fatal(err)
		}
		compareLB(t, in, proxy.ExpectedLB("iptables", d))
		if !in.LB().MasqueradeAll {
			t.Error("masquerade all not read back")
		}
	})
	t.Run("large cluster", func(t *testing.T) {
		d := scaleDesired(101, 10)
		rs := Render(d)
		if !rs.glob.largeCluster {
			t.Fatal("not a large cluster")
		}
		in, err := inspectSaved(FlavourNFT, savedText(rs), d.Node.IPs)
		if err != nil {
			t.Fatal(err)
		}
		compareLB(t, in, proxy.ExpectedLB("iptables", d))
		if u := in.Unmapped(); len(u) > 0 {
			t.Errorf("%d unmapped chains, first %s", len(u), u[0])
		}
	})
}

// TestInspectParseErrors: a rule kdive does not write is an error naming
// its chain and the rule.
func TestInspectParseErrors(t *testing.T) {
	for _, rule := range []string{
		"-i eth0 -j KUBE-MARK-MASQ",
		"! -d 10.0.0.1/32 -j KUBE-MARK-MASQ",
		"-m statistic --mode nth --every 2 -j KUBE-SEP-X",
		"-m mark --mark 0x4000 -j RETURN",
		"-p tcp -j DNAT --to-destination 10.0.0.1",
		"-m recent --rcheck --seconds 10 --name X --mask 255.255.255.0 --rsource -j KUBE-SEP-X",
	} {
		out := "*nat\n:KUBE-SVC-AAAAAAAAAAAAAAAA - [0:0]\n[0:0] -A KUBE-SVC-AAAAAAAAAAAAAAAA " + rule + "\nCOMMIT\n"
		_, err := inspectSaved(FlavourNFT, out, nil)
		if err == nil || !strings.Contains(err.Error(), "KUBE-SVC-AAAAAAAAAAAAAAAA") || !strings.Contains(err.Error(), rule) {
			t.Errorf("%q: error %v, want one naming chain and rule", rule, err)
		}
	}
	// Someone else's chain may hold anything.
	if _, err := inspectSaved(FlavourNFT, "*nat\n:FOREIGN - [0:0]\n-A FOREIGN -i eth0 -j RETURN\n-A PREROUTING -i eth0 -j FOREIGN\nCOMMIT\n", nil); err != nil {
		t.Errorf("foreign rules: %v", err)
	}
}

// kernelNode syncs d into a fresh namespace of flavour f whose node
// addresses are on a link (one end of a veth pair whose other end is in
// the same namespace, both up, with a default route through it).
func kernelNode(t *testing.T, f Flavour, d *proxy.Desired) *kernelProxier {
	t.Helper()
	ktest.RequireFeature(t, kernel.FeatureVeth)
	kp := newKernelProxier(t, f)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(kp.ns.AddVeth("node0", kernel.LinkAttrs{}, kp.ns, "node0p", kernel.LinkAttrs{}))
	for _, ip := range d.Node.IPs {
		must(kp.ns.AddAddr("node0", netip.PrefixFrom(ip, 24)))
	}
	must(kp.ns.LinkUp("node0"))
	must(kp.ns.LinkUp("node0p"))
	must(kp.ns.ReplaceRoute(kernel.Route{Dev: "node0"}))
	if err := kp.Sync(context.Background(), d); err != nil {
		t.Fatalf("sync: %v", err)
	}
	return kp
}

func inspect(t *testing.T, ns *kernel.NetNS) *Inspected {
	t.Helper()
	insp, err := Inspect(context.Background(), ns)
	if err != nil {
		t.Fatalf("inspect: %v", err)
	}
	return insp.(*Inspected)
}

// TestInspectKernelCases: the case table passes over the kernel's rules.
func TestInspectKernelCases(t *testing.T) {
	for _, f := range xtables.Flavours {
		t.Run(string(f), func(t *testing.T) {
			t.Parallel()
			requireFlavour(t, f)
			synced := map[*proxy.Desired]*Inspected{}
			outer := t
			proxytest.Run(t, func(t *testing.T, d *proxy.Desired, p proxytest.Packet) proxytest.Result {
				in := synced[d]
				if in == nil {
					in = inspect(t, kernelNode(outer, f, d).ns)
					if in.Flavour() != f {
						t.Fatalf("inspected flavour %s", in.Flavour())
					}
					synced[d] = in
				}
				return in.Trace(p)
			})
		})
	}
}

// TestInspectKernel reads a synced fixture back: the LB table, every
// service chain mapped, Explain, counters of real packets, and a rule
// deleted by hand showing up.
func TestInspectKernel(t *testing.T) {
	for _, f := range xtables.Flavours {
		t.Run(string(f), func(t *testing.T) {
			t.Parallel()
			testInspectKernel(t, f)
		})
	}
}

func testInspectKernel(t *testing.T, f Flavour) {
	d := fixture()
	kp := kernelNode(t, f, d)
	in := inspect(t, kp.ns)
	compareLB(t, in, proxy.ExpectedLB("iptables", d))
	if testing.Verbose() {
		for _, p := range []proxytest.Packet{
			{Src: proxytest.LocalPod, Proto: model.ProtocolTCP, Dst: netip.MustParseAddr("10.1.0.7"), Port: 80},
			{Src: proxytest.ExternalIP, Proto: model.ProtocolTCP, Dst: proxytest.NodeIP, Port: 30082},
		} {
			t.Logf("Explain:\n%s", strings.Join(in.Explain(p), "\n"))
		}
	}

	// Every service chain is mapped to a port of the fixture, and its name
	// is upstream's hash of that port (and of the DNAT endpoint).
	ports := map[model.ServicePortName]bool{}
	for _, p := range d.Services {
		ports[p.Name] = true
	}
	n := 0
	for name := range chainsIn(t, kp.ns, f, TableNAT) {
		if !isServiceChain(name) {
			continue
		}
		n++
		c := in.Ruleset().Chain(TableNAT, name)
		if c == nil || c.Service == nil || !ports[*c.Service] {
			t.Errorf("chain %s not mapped to a fixture port", name)
			continue
		}
		proto := strings.ToLower(string(c.Service.Protocol))
		if strings.HasPrefix(name, prefixSEP) {
			ep := sepEndpoint(c)
			if !ep.IsValid() || endpointChainName(c.Service.String(), proto, ep.String()) != name {
				t.Errorf("chain %s mapped to %s -> %s, which is not its name", name, c.Service, ep)
			}
		} else if !strings.HasSuffix(name, portProtoHash(c.Service.String(), proto)) {
			t.Errorf("chain %s mapped to %s, which is not its name", name, c.Service)
		}
	}
	if n < 30 || len(in.Unmapped()) > 0 {
		t.Errorf("%d service chains, unmapped %v", n, in.Unmapped())
	}

	web := kp.r.names.port(port(d, "default/web:http").Name)
	ex := strings.Join(in.Explain(proxytest.Packet{Src: proxytest.LocalPod, Proto: model.ProtocolTCP, Dst: netip.MustParseAddr("10.1.0.2"), Port: 80}), "\n")
	for _, want := range []string{
		"-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
		"-j " + web.svc, "nat " + web.svc + " (default/web:http):",
		"-j " + web.endpoint(netipAP("10.0.1.2:8080")).chain + "  [chance 33.3%]",
		"-j " + web.endpoint(netipAP("10.0.3.2:8080")).chain,
		"DNAT to 10.0.2.2:8080", "result (chance 33.3%): DNAT to 10.0.3.2:8080, not masqueraded",
		"verdict: DNAT 10.0.1.2:8080 10.0.2.2:8080 10.0.3.2:8080",
	} {
		if !strings.Contains(ex, want) {
			t.Errorf("Explain lacks %q:\n%s", want, ex)
		}
	}
	ex = strings.Join(in.Explain(proxytest.Packet{Src: proxytest.NodeIP, Proto: model.ProtocolTCP, Dst: netip.MustParseAddr("10.1.0.2"), Port: 80, FromNode: true}), "\n")
	for _, want := range []string{"-j KUBE-MARK-MASQ", "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully", "DNAT to 10.0.1.2:8080, masqueraded"} {
		if !strings.Contains(ex, want) {
			t.Errorf("Explain from the node lacks %q:\n%s", want, ex)
		}
	}

	// A UDP packet from the node to kube-dns counts once.
	c, err := kp.ns.DialContext(context.Background(), "udp", "10.1.0.10:53")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	c.Close()
	dns := inspect(t, kp.ns).LB().Service(port(d, "kube-system/kube-dns:dns").Name)
	if dns == nil || dns.Counters == nil || dns.Counters.Packets != 1 || dns.Counters.Bytes != 32 {
		t.Errorf("kube-dns:dns after one packet: %+v", dns)
	}

	// Someone deletes web:http's jump to its third endpoint.
	sep := web.endpoint(netipAP("10.0.3.2:8080")).chain
	iptables(t, kp.ns, f, "", "-w", "-t", "nat", "-D", web.svc, "-m", "comment", "--comment", "default/web:http -> 10.0.3.2:8080", "-j", sep)
	in = inspect(t, kp.ns)
	diffs := proxy.CompareLB(in.LB(), proxy.ExpectedLB("iptables", d))
	// (KUBE-EXT sends outside traffic to the same KUBE-SVC.)
	if len(diffs) != 2 || !strings.HasPrefix(diffs[0], "default/web:http/TCP: internal endpoints [10.0.1.2:8080=0.333 10.0.2.2:8080=0.333],") ||
		!strings.HasPrefix(diffs[1], "default/web:http/TCP: external endpoints [10.0.1.2:8080=0.333 10.0.2.2:8080=0.333],") {
		t.Errorf("after deleting a KUBE-SEP jump, diffs:\n%s", strings.Join(diffs, "\n"))
	}
	if got := in.Trace(proxytest.Packet{Src: proxytest.LocalPod, Proto: model.ProtocolTCP, Dst: netip.MustParseAddr("10.1.0.2"), Port: 80}); got.Endpoints["10.0.3.2:8080"] {
		t.Errorf("trace still reaches the deleted endpoint: %s", got)
	}

	// A rule kdive does not write, in its chain: an error naming both.
	iptables(t, kp.ns, f, "", "-w", "-t", "nat", "-I", web.svc, "1", "-i", "lo", "-j", "KUBE-MARK-MASQ")
	if _, err := Inspect(context.Background(), kp.ns); err == nil || !strings.Contains(err.Error(), web.svc) || !strings.Contains(err.Error(), "-i lo") {
		t.Errorf("inspect with a foreign rule in %s: %v", web.svc, err)
	}
}
