package lab

import (
	"context"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/ktest"
)

// The presets' node routes are what DESIGN.md describes; node-1 (zone-a,
// 10.0.1.0/24) has node-2 in its subnet and node-3 across it.
var presetRoutes = map[string][]string{
	"A": { // routed, IPIP cross-subnet
		`^blackhole 10\.0\.1\.0/24 proto 107 metric 1024$`,
		`^10\.0\.1\.\d+/32 dev cali[0-9a-f]{11} scope link proto 108$`,
		`^169\.254\.1\.1/32 dev lo scope link proto 107$`,
		`^10\.0\.2\.0/24 via 172\.20\.1\.11 dev eth0 proto 107$`,
		`^10\.0\.3\.0/24 via 172\.20\.2\.10 dev tunl0 onlink proto 107$`,
	},
	"B": { // routed, IPIP always
		`^blackhole 10\.0\.1\.0/24 proto 107 metric 1024$`,
		`^10\.0\.1\.\d+/32 dev cali[0-9a-f]{11} scope link proto 108$`,
		`^10\.0\.2\.0/24 via 172\.20\.1\.11 dev tunl0 onlink proto 107$`,
		`^10\.0\.3\.0/24 via 172\.20\.2\.10 dev tunl0 onlink proto 107$`,
	},
	"C": { // kube-bridge, direct in the subnet, per-peer IPIP across
		`^10\.0\.1\.0/24 dev kube-bridge scope link src 10\.0\.1\.1 proto 2$`,
		`^blackhole 10\.0\.1\.0/24 proto 107 metric 1024$`,
		`^10\.0\.2\.0/24 via 172\.20\.1\.11 dev eth0 proto 107$`,
		`^10\.0\.3\.0/24 via 172\.20\.2\.10 dev tun-[0-9a-f]{10} onlink proto 107$`,
	},
	"D": { // routed, VXLAN cross-subnet
		`^blackhole 10\.0\.1\.0/24 proto 107 metric 1024$`,
		`^10\.0\.1\.\d+/32 dev cali[0-9a-f]{11} scope link proto 108$`,
		`^10\.0\.2\.0/24 via 172\.20\.1\.11 dev eth0 proto 107$`,
		`^10\.0\.3\.0/24 via 10\.0\.3\.0 dev vxlan\.kdive onlink proto 107$`,
	},
}

func checkPreset(t *testing.T, preset string) {
	ktest.RequireFeature(t, kernel.FeatureVeth)
	name := "kdt-preset-" + strings.ToLower(preset)
	downLeftover(t, name)
	p, raw, err := Prepare(name, Source{Preset: preset})
	if err != nil {
		t.Fatal(err)
	}
	s, err := Up(context.Background(), p, UpOptions{LabFile: raw, Binaries: testBins(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := Down(name); err != nil {
			t.Errorf("down %s: %v", name, err)
		}
	})
	node1 := openNS(t, p.Nodes[0].NetNS)
	rs, err := node1.Routes()
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, r := range rs {
		lines = append(lines, r.String())
	}
	table := strings.Join(lines, "\n")
	for _, want := range presetRoutes[preset] {
		if !regexp.MustCompile(`(?m)` + want).MatchString(table) {
			t.Errorf("preset %s: node-1 has no route matching %s:\n%s", preset, want, table)
		}
	}
	if p.PodNetwork.Interface == "bridge" && strings.Contains(table, "cali") {
		t.Errorf("preset %s (bridge) has per-pod routes:\n%s", preset, table)
	}
	// And a cross-subnet request is answered: coredns-0 on node-1 asks
	// ingress-2 on node-3.
	var ingress2 string
	for _, pod := range GetStatus(context.Background(), s).Pods {
		if pod.Name == "ingress-2" && pod.Node == "node-3" {
			ingress2 = pod.IP
		}
	}
	src := openNS(t, PodNetNS(name, "kube-system", "coredns-0"))
	if got, err := httpGet(src, ingress2, nil); err != nil || got != "ingress-2" {
		t.Errorf("preset %s: coredns-0 -> ingress-2 (%s): %q, %v", preset, ingress2, got, err)
	}
	// The preset's proxy mode serves the ingress service: all three pods
	// answer its cluster IP (10.1.0.2) within a few seconds, ingress-0 from
	// the client's own node (in bridge mode its replies are un-NATed only
	// through br_netfilter).
	waitAnsweredBy(t, src, "10.1.0.2:80", 3)
	if p.Proxy.Mode == "ipvs" {
		// DESIGN.md: kube-ipvs0 holds every service IP; ipvsadm -ln shows
		// VIP -> pod IPs.
		out, err := node1.Run(context.Background(), "", "ipvsadm", "-ln")
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"TCP  10.1.0.2:80 rr", "UDP  10.1.0.10:53 rr", "TCP  172.20.1.10:30080 rr", "-> " + ingress2 + ":8080"} {
			if !strings.Contains(out, want) {
				t.Errorf("preset A: ipvsadm -ln lacks %q:\n%s", want, out)
			}
		}
		l, err := node1.LinkByName("kube-ipvs0")
		if err != nil || !slices.ContainsFunc(l.Addrs, func(a netip.Prefix) bool { return a.String() == "10.1.0.10/32" }) {
			t.Errorf("preset A: kube-ipvs0 = %+v, %v; want it to hold 10.1.0.10/32", l, err)
		}
	}
}

func TestPresetRoutesVXLAN(t *testing.T) {
	ktest.RequireFeature(t, kernel.FeatureVXLAN)
	checkPreset(t, "D")
}

// TestPresetRoutesIPIP runs in the test VM (presets A-C need ipip).
func TestPresetRoutesIPIP(t *testing.T) {
	ktest.RequireFeature(t, kernel.FeatureIPIP)
	for _, preset := range []string{"A", "B", "C"} {
		t.Run(preset, func(t *testing.T) { checkPreset(t, preset) })
	}
}
