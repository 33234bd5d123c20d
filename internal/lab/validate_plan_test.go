package lab

import (
	"strings"
	"testing"
	"time"
)

// TestBadLabRanges: lab files whose ranges overlap what is not the lab's
// to give out, or whose node labels contradict the kubelet's. (Overlaps
// among the lab's own ranges are TestBadLabFiles'.)
func TestBadLabRanges(t *testing.T) {
	cases := []struct {
		name, old, new string
		want           []string
	}{
		{"pod CIDR over loopback", "podCIDR: 10.0.0.0/16", "podCIDR: 127.0.0.0/16",
			[]string{`spec.podCIDR: Invalid value: "127.0.0.0/16": overlaps the loopback range 127.0.0.0/8`}},
		{"pod CIDR over the routed gateway", "podCIDR: 10.0.0.0/16", "podCIDR: 169.254.0.0/16",
			[]string{`spec.podCIDR: Invalid value: "169.254.0.0/16": overlaps the link-local range (routed pods' gateway 169.254.1.1) 169.254.0.0/16`}},
		{"service CIDR over multicast", "serviceCIDR: 10.1.0.0/16", "serviceCIDR: 224.0.0.0/16",
			[]string{`spec.serviceCIDR: Invalid value: "224.0.0.0/16": overlaps the multicast range 224.0.0.0/4`}},
		{"subnet in this network", "cidr: 172.20.1.0/24", "cidr: 0.0.1.0/24",
			[]string{`spec.subnets[0].cidr: Invalid value: "0.0.1.0/24": overlaps the "this network" range 0.0.0.0/8`}},
		{"load balancer pool reserved", "proxy: {mode: nftables}", "proxy: {mode: nftables}\n  loadBalancerCIDR: 250.0.0.0/24",
			[]string{`spec.loadBalancerCIDR: Invalid value: "250.0.0.0/24": overlaps the reserved range (and broadcast) 240.0.0.0/4`}},
		{"external over everything", "proxy: {mode: nftables}", "proxy: {mode: nftables}\n  external: {cidr: 0.0.0.0/1}",
			[]string{`spec.external.cidr: Invalid value: "0.0.0.0/1"`, "overlaps spec.podCIDR"}},
		{"hostname label", "nodes: [{name: n1, subnet: a}]", "nodes: [{name: n1, subnet: a, labels: {kubernetes.io/hostname: n2}}]",
			[]string{`spec.nodes[0].labels[kubernetes.io/hostname]: Invalid value: "n2": the kubelet sets it to "n1"`}},
		{"os label", "nodes: [{name: n1, subnet: a}]", "nodes: [{name: n1, subnet: a, labels: {kubernetes.io/os: windows}}]",
			[]string{`spec.nodes[0].labels[kubernetes.io/os]: Invalid value: "windows": the kubelet sets it to "linux"`}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if !strings.Contains(validLab, c.old) {
				t.Fatalf("test case edits %q, which the lab lacks", c.old)
			}
			err := planErr(t, strings.Replace(validLab, c.old, c.new, 1))
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
		})
	}
	// The kubelet's own values are fine to repeat.
	ok := strings.Replace(validLab, "nodes: [{name: n1, subnet: a}]", "nodes: [{name: n1, subnet: a, labels: {kubernetes.io/hostname: n1, kubernetes.io/os: linux}}]", 1)
	if err := planErr(t, ok); err != nil {
		t.Error(err)
	}
}

// TestLabFileCycles: YAML that refers to itself, or multiplies by
// aliases, is refused quickly by both parsers, lab files and objects.
func TestLabFileCycles(t *testing.T) {
	bomb := "a: &a [x,x,x,x,x,x,x,x,x,x]\n"
	for i, prev := 0, "a"; i < 8; i++ {
		name := string(rune('b' + i))
		bomb += name + ": &" + name + " [" + strings.Repeat("*"+prev+",", 9) + "*" + prev + "]\n"
		prev = name
	}
	for _, c := range []struct{ name, doc, want string }{
		{"self-referencing list", "spec: &s {nodes: [*s]}\n", "anchor 's' value contains itself"},
		{"self-referencing map", "spec: &s {subnets: {a: *s}}\n", "anchor 's' value contains itself"},
		{"unknown anchor", "spec: *s\n", "unknown anchor 's' referenced"},
		{"alias bomb", bomb, "excessive aliasing"},
		{"deep nesting", strings.Repeat("[", 100000) + strings.Repeat("]", 100000), ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			start := time.Now()
			_, err := Parse([]byte(c.doc))
			_, serr := SplitYAML([]byte(c.doc))
			if err == nil || serr == nil {
				t.Fatalf("Parse: %v; SplitYAML: %v", err, serr)
			}
			if !strings.Contains(err.Error(), c.want) || !strings.Contains(serr.Error(), c.want) {
				t.Errorf("Parse: %v; SplitYAML: %v; want %q", err, serr, c.want)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("took %v", d)
			}
		})
	}
}
