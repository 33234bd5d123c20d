package lab

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/kdive/kdive/internal/cni"
	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/ktest"
	"github.com/kdive/kdive/internal/testbin"
)

// Switching proxy modes on a node, and `kdive agent --cleanup`, leave
// nothing of kdive behind. TestProxyModeSwitchLeavesNothing
// (modeswitch_test.go) checks nftables <-> iptables by table and chain
// names; these tests follow one node through every switch between the
// three modes and none with services of every kind programmed, compare everything
// each proxy mode, the pod network and the CNI plugin leave in the kernel
// (below, a node's kdive footprint), and end with --cleanup.

// footprint is everything of kdive in a node's kernel, by owner, each part
// normalized (sorted, without counters or handles) so that two readings of
// the same state compare equal.
type footprint struct {
	nft       map[string][]string // table -> its listing's tokens
	iptables  map[string][]string // flavour -> KUBE- chains and rules
	ipsets    []string            // `ipset save` lines of KUBE- sets
	ipvs      []string            // `ipvsadm -Sn` lines
	dummy     []string            // kube-ipvs0 and its addresses
	routes    []string            // routes of protocol 107 (the agent's), every table
	tunnels   []string            // vxlan.kdive, tun-*, devices aliased kdive-podnet, tunl0 unless released
	conflist  bool
	confPath  string
	hostPorts bool // the CNI plugin's table ip kdive-hostport
}

var (
	nftCounters = regexp.MustCompile(`counter packets \d+ bytes \d+`)
	iptCounters = regexp.MustCompile(`\[\d+:\d+\]`)
	nftTokens   = regexp.MustCompile(`[{},\n]`)
)

func nsOutput(ns *kernel.NetNS, argv ...string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, _ := ns.Run(ctx, "", argv[0], argv[1:]...) // a tool or module missing: nothing of that kind
	return out
}

func sortedLines(s string, keep func(string) bool) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" && keep(l) {
			out = append(out, l)
		}
	}
	slices.Sort(out)
	return out
}

func readFootprint(ns *kernel.NetNS, confDir string) footprint {
	f := footprint{nft: map[string][]string{}, iptables: map[string][]string{}}
	for _, l := range sortedLines(nsOutput(ns, "nft", "list", "tables"), func(l string) bool { return strings.Contains(l, "kdive") }) {
		fields := strings.Fields(l) // table FAMILY NAME
		if len(fields) != 3 {
			continue
		}
		text := nftCounters.ReplaceAllString(nsOutput(ns, "nft", "list", "table", fields[1], fields[2]), "counter")
		f.nft[fields[1]+" "+fields[2]] = sortedLines(nftTokens.ReplaceAllString(text, "\n"), func(string) bool { return true })
		f.hostPorts = f.hostPorts || fields[2] == "kdive-hostport"
	}
	for _, flavour := range []string{"nft", "legacy"} {
		save := nsOutput(ns, "iptables-"+flavour+"-save")
		if l := sortedLines(save, func(l string) bool { return strings.Contains(l, "KUBE-") }); len(l) > 0 {
			for i := range l {
				l[i] = iptCounters.ReplaceAllString(l[i], "")
			}
			f.iptables[flavour] = l
		}
	}
	f.ipsets = sortedLines(nsOutput(ns, "ipset", "save"), func(l string) bool { return strings.Contains(l, "KUBE-") })
	f.ipvs = sortedLines(nsOutput(ns, "ipvsadm", "-Sn"), func(string) bool { return true })
	if l, err := ns.LinkInfo("kube-ipvs0"); err == nil {
		f.dummy = append(f.dummy, "link kube-ipvs0 "+l.Type)
		for _, a := range l.Addrs {
			f.dummy = append(f.dummy, "addr "+a.String())
		}
		slices.Sort(f.dummy)
	}
	f.routes = sortedLines(nsOutput(ns, "ip", "-o", "route", "show", "table", "all", "proto", "107"), func(string) bool { return true })
	if ts, err := ns.Tunnels(); err == nil {
		for _, t := range ts {
			released := t.Name == "tunl0" && len(t.Addrs) == 0 && t.Alias == "" && !t.Up
			if !released && (t.Name == "vxlan.kdive" || strings.HasPrefix(t.Name, "tun-") || t.Name == "tunl0" || t.Alias == "kdive-podnet") {
				f.tunnels = append(f.tunnels, t.String())
			}
		}
		slices.Sort(f.tunnels)
	}
	f.confPath = filepath.Join(confDir, cni.ConfListFile)
	_, err := os.Stat(f.confPath)
	f.conflist = err == nil
	return f
}

// proxyParts is the part of a footprint a proxy mode owns, as text.
func (f footprint) proxyParts() string {
	var b strings.Builder
	for _, tbl := range sortedKeys(f.nft) {
		if strings.Contains(tbl, "kdive-proxy") {
			fmt.Fprintf(&b, "nft %s:\n  %s\n", tbl, strings.Join(f.nft[tbl], "\n  "))
		}
	}
	for _, fl := range sortedKeys(f.iptables) {
		fmt.Fprintf(&b, "iptables-%s:\n  %s\n", fl, strings.Join(f.iptables[fl], "\n  "))
	}
	for _, part := range []struct {
		what string
		ls   []string
	}{{"ipset", f.ipsets}, {"ipvs", f.ipvs}, {"kube-ipvs0", f.dummy}} {
		if len(part.ls) > 0 {
			fmt.Fprintf(&b, "%s:\n  %s\n", part.what, strings.Join(part.ls, "\n  "))
		}
	}
	return b.String()
}

func sortedKeys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// leftovers lists what f holds that proxy mode mode (nftables, iptables,
// ipvs or none) does not own: another mode's tables, chains, sets,
// virtual servers or addresses.
func (f footprint) leftovers(mode string) []string {
	var out []string
	if _, ok := f.nft["ip kdive-proxy"]; ok && mode != "nftables" {
		out = append(out, "nftables table ip kdive-proxy")
	}
	if mode != "ipvs" {
		for what, ls := range map[string][]string{"ipsets": f.ipsets, "IPVS services": f.ipvs, "kube-ipvs0": f.dummy} {
			if len(ls) > 0 {
				out = append(out, fmt.Sprintf("%s: %v", what, ls))
			}
		}
	}
	switch {
	case mode != "iptables" && mode != "ipvs":
		for fl, ls := range f.iptables {
			out = append(out, fmt.Sprintf("iptables-%s: %d KUBE- lines, first %s", fl, len(ls), ls[0]))
		}
	case len(f.iptables) > 1:
		out = append(out, "KUBE- rules in both iptables flavours")
	}
	// The chains only the other iptables-based mode creates (the two
	// share KUBE-SERVICES, KUBE-POSTROUTING, KUBE-MARK-MASQ, KUBE-FORWARD).
	for fl, ls := range f.iptables {
		for _, l := range ls {
			chain, ok := strings.CutPrefix(strings.Fields(l)[0], ":")
			if !ok {
				continue
			}
			if mode == "ipvs" && iptablesModeOnly(chain) || mode == "iptables" && ipvsModeOnly(chain) {
				out = append(out, fmt.Sprintf("iptables-%s: chain %s of the other mode in %s mode", fl, chain, mode))
			}
		}
	}
	return out
}

// iptablesModeOnly and ipvsModeOnly name the chains only that mode
// creates (as internal/proxy/ipvs tells them apart).
func iptablesModeOnly(chain string) bool {
	for _, p := range []string{"KUBE-SVC-", "KUBE-SEP-", "KUBE-EXT-", "KUBE-FW-", "KUBE-SVL-"} {
		if strings.HasPrefix(chain, p) {
			return true
		}
	}
	return slices.Contains([]string{"KUBE-NODEPORTS", "KUBE-EXTERNAL-SERVICES", "KUBE-PROXY-FIREWALL", "KUBE-KDIVE-CANARY"}, chain)
}

func ipvsModeOnly(chain string) bool {
	return slices.Contains([]string{"KUBE-NODE-PORT", "KUBE-LOAD-BALANCER", "KUBE-IPVS-FILTER", "KUBE-IPVS-FIREWALL", "KUBE-SOURCE-RANGES-FIREWALL"}, chain)
}

// programs tells whether f shows mode programming address ip (a cluster
// IP or an endpoint).
func (f footprint) programs(mode, ip string) bool {
	has := func(ls []string) bool {
		return slices.ContainsFunc(ls, func(l string) bool { return strings.Contains(l, ip) })
	}
	switch mode {
	case "nftables":
		return has(f.nft["ip kdive-proxy"])
	case "iptables":
		return has(f.iptables["nft"]) || has(f.iptables["legacy"])
	case "ipvs":
		// kube-ipvs0 holds only service addresses; the iptables rules
		// match ipsets, so they name no address.
		ipt := slices.ContainsFunc(slices.Concat(f.iptables["nft"], f.iptables["legacy"]), func(l string) bool {
			return strings.Contains(l, "KUBE-CLUSTER-IP")
		})
		return has(f.ipvs) && len(f.dummy) > 0 && len(f.ipsets) > 0 && ipt
	}
	return true
}

// nothing lists everything of kdive f still holds, for after --cleanup.
func (f footprint) nothing() []string {
	var out []string
	for tbl := range f.nft {
		out = append(out, "nft table "+tbl)
	}
	if l := f.leftovers("none"); len(l) > 0 {
		out = append(out, l...)
	}
	if len(f.routes) > 0 {
		out = append(out, fmt.Sprintf("agent routes (protocol 107): %v", f.routes))
	}
	if len(f.tunnels) > 0 {
		out = append(out, fmt.Sprintf("tunnels: %v", f.tunnels))
	}
	if f.conflist {
		out = append(out, "CNI network config "+f.confPath)
	}
	return out
}

// switchBed is one lab node whose agent the test stops and starts.
type switchBed struct {
	p     *Plan
	node  NodePlan
	ns    *kernel.NetNS
	wait  time.Duration // how long an agent may take to converge
	addrs []string      // the services' cluster IPs and the endpoint's address
}

// stopAgent ends the node's agent (SIGTERM; SIGKILL after 20 s) and waits
// until it is gone, so two agents never run at once.
func (b *switchBed) stopAgent(t *testing.T) {
	t.Helper()
	stopNodeAgent(t, b.p, b.node)
}

// converge waits until cond holds for the node's footprint and the
// footprint is stable (the same on a second reading a moment later: a
// sync in progress, e.g. IPVS programmed but not yet its iptables rules,
// is not the converged state), failing with what it last saw.
func (b *switchBed) converge(t *testing.T, what string, cond func(footprint) []string) footprint {
	t.Helper()
	deadline := time.Now().Add(b.wait)
	var last footprint
	for {
		f := readFootprint(b.ns, b.p.confDir(b.node.Name))
		problems := cond(f)
		if len(problems) == 0 && f.proxyParts() == last.proxyParts() {
			return f
		}
		if time.Now().After(deadline) {
			if len(problems) == 0 {
				problems = []string{"the state keeps changing:\n" + lineDiff(last.proxyParts(), f.proxyParts())}
			}
			t.Fatalf("%s: after %s:\n  %s\nagent log:\n%s", what, b.wait, strings.Join(problems, "\n  "), fileTail(filepath.Join(b.p.nodeDir(b.node.Name), "agent.log"), 15))
		}
		last = f
		// Not ktest.Eventually: stable means the same a while later, and a
		// reading runs a dozen commands, not to be repeated every 50 ms.
		time.Sleep(b.wait / 60) // 0.5 s natively, 2 s in the VM
	}
}

func fileTail(file string, n int) string {
	bs, _ := os.ReadFile(file)
	ls := strings.Split(strings.TrimRight(string(bs), "\n"), "\n")
	return strings.Join(ls[max(0, len(ls)-n):], "\n")
}

// hostPortPod attaches a pod netns to node n with a hostPort, through the
// node's conflist and CNI plugin as a runtime would, so the plugin's
// table ip kdive-hostport exists.
func (b *switchBed) hostPortPod(t *testing.T) {
	t.Helper()
	pod := ktest.NewNetNS(t)
	rt := &libcni.RuntimeConf{
		ContainerID: "modeswitch-hostport", NetNS: pod.Path(), IfName: "eth0",
		CapabilityArgs: map[string]any{"portMappings": []map[string]any{{"hostPort": 8081, "containerPort": 8080, "protocol": "tcp"}}},
	}
	err := b.p.cniCall(b.node.Name, func(c *libcni.CNIConfig, list *libcni.NetworkConfigList) error {
		_, err := c.AddNetworkList(context.Background(), list, rt)
		return err
	})
	if err != nil {
		t.Fatalf("CNI ADD with a hostPort: %v", err)
	}
}

// checkModeSwitches runs node n1's agent in each mode of seq in turn (the
// lab starts in seq[0]), then uninstalls it with --cleanup.
func checkModeSwitches(t *testing.T, s *State, seq []string, wait time.Duration) {
	p := s.Plan
	b := &switchBed{p: p, node: p.Nodes[0], ns: openNS(t, p.Nodes[0].NetNS), wait: wait}
	st := GetStatus(context.Background(), s)
	for _, sv := range st.Services {
		if strings.HasPrefix(sv.Name, "web") {
			b.addrs = append(b.addrs, sv.ClusterIP)
		}
	}
	if len(b.addrs) < 4 || len(st.Pods) != 1 || st.Pods[0].IP == "" {
		t.Fatalf("lab has %d web services and pods %+v, want 4 and web-0 with an address", len(b.addrs), st.Pods)
	}
	b.addrs = append(b.addrs, st.Pods[0].IP) // the endpoint, programmed too
	b.switchThrough(t, seq)
	b.cleanupLeavesNothing(t)
}

// programmed is the condition "mode has programmed every service address
// and the endpoint, nothing of another mode is left, the pod network is
// there".
func (b *switchBed) programmed(mode string) func(footprint) []string {
	return func(f footprint) []string {
		problems := f.leftovers(mode)
		for _, ip := range b.addrs {
			if !f.programs(mode, ip) {
				problems = append(problems, fmt.Sprintf("%s mode has not programmed %s", mode, ip))
			}
		}
		if len(f.routes) == 0 || !f.conflist {
			problems = append(problems, "the pod network is not programmed (no agent routes or no conflist)")
		}
		return problems
	}
}

// switchThrough restarts the agent in each mode of seq and checks, after
// each switch, that the new mode programmed the services, that nothing of
// another mode is left, and that the new mode's state equals what the
// same mode programmed the previous time it ran (a chain, set or address
// the previous mode shares names with, left behind, would show there).
func (b *switchBed) switchThrough(t *testing.T, seq []string) {
	seen := map[string]string{}
	for i, mode := range seq {
		what := mode
		if i > 0 {
			what = seq[i-1] + " -> " + mode
			b.stopAgent(t)
			if _, err := b.p.startAgent(b.node, testBins(t), mode); err != nil {
				t.Fatal(err)
			}
		}
		start := time.Now()
		f := b.converge(t, what, b.programmed(mode))
		prev, again := seen[mode]
		if again {
			// The same mode over the same services: the same state, once
			// it has converged (it may take a sync or two).
			f = b.converge(t, what+": the same state as the last time in "+mode, func(f footprint) []string {
				if probs := b.programmed(mode)(f); len(probs) > 0 {
					return probs
				}
				if got := f.proxyParts(); got != prev {
					return []string{"state differs from the last time in " + mode + ":\n" + lineDiff(prev, got)}
				}
				return nil
			})
		}
		seen[mode] = f.proxyParts()
		t.Logf("%s: converged in %s, nothing of another mode left%s", what, time.Since(start).Round(10*time.Millisecond),
			map[bool]string{true: ", same state as the last time in " + mode}[again])
	}
}

// cleanupLeavesNothing uninstalls: with the CNI plugin's hostPort table
// there too (a pod with a hostPort), the agent stops and `kdive agent
// --cleanup` runs with the node's flags; nothing of kdive may be left.
func (b *switchBed) cleanupLeavesNothing(t *testing.T) {
	p := b.p
	b.hostPortPod(t)
	before := readFootprint(b.ns, p.confDir(b.node.Name))
	if !before.hostPorts {
		t.Fatal("CNI ADD with a hostPort made no table ip kdive-hostport")
	}
	if len(before.tunnels) == 0 {
		t.Fatal("n1 has no tunnel to n2 before the cleanup; the lab should make one")
	}
	b.stopAgent(t)
	cmd := exec.Command(testbin.Path(t, testbin.Kdive), "agent", "--cleanup",
		"--node-name", b.node.Name, "--cni-conf-dir", p.confDir(b.node.Name), "--cni-data-dir", p.ipamDir(b.node.Name),
		"--interface", p.PodNetwork.Interface, "--encap", p.PodNetwork.Encap, "--encap-policy", p.PodNetwork.EncapPolicy)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := b.ns.Start(cmd); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("kdive agent --cleanup: %v\n%s", err, out.String())
	}
	if left := readFootprint(b.ns, p.confDir(b.node.Name)).nothing(); len(left) > 0 {
		t.Errorf("kdive agent --cleanup left:\n  %s", strings.Join(left, "\n  "))
	}
	// By design the pods keep their interfaces until they go: their veths,
	// the CNI plugin's per-pod routes (protocol 108) and, in bridge mode,
	// kube-bridge.
	t.Logf("after --cleanup nothing of kdive is left (before it: tables %v, tunnels %v, %d agent routes); pods keep %d CNI routes (protocol 108)",
		sortedKeys(before.nft), before.tunnels, len(before.routes),
		len(sortedLines(nsOutput(b.ns, "ip", "-o", "route", "show", "proto", "108"), func(string) bool { return true })))
}

// lineDiff shows the lines only in a (-) and only in b (+).
func lineDiff(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	var out []string
	for _, l := range al {
		if !slices.Contains(bl, l) {
			out = append(out, "- "+l)
		}
	}
	for _, l := range bl {
		if !slices.Contains(al, l) {
			out = append(out, "+ "+l)
		}
	}
	return strings.Join(out, "\n")
}

// switchLab is a two-node lab, one node per subnet (so n1 has a tunnel to
// n2), with a pod on n2 and a service of each kind: ClusterIP, NodePort
// with an external IP, LoadBalancer with source ranges and policy Local
// (a health check port), ClientIP affinity.
func switchLab(iface, encap, mode string) string {
	return fmt.Sprintf(`
apiVersion: kdive.dev/v1alpha1
kind: Lab
spec:
  podCIDR: 10.0.0.0/16
  blockSize: 24
  serviceCIDR: 10.1.0.0/16
  podNetwork: {interface: %s, encap: %s, encapPolicy: cross-subnet}
  proxy: {mode: %s}
  subnets: [{name: a, cidr: 172.20.1.0/24}, {name: b, cidr: 172.20.2.0/24}]
  nodes: [{name: n1, subnet: a}, {name: n2, subnet: b}]
  objects:
  - apiVersion: v1
    kind: Pod
    metadata: {name: web-0, labels: {app: web}}
    spec: {nodeName: n2, containers: [{name: echo, image: kdive-echo, ports: [{containerPort: 8080}]}]}
  - apiVersion: v1
    kind: Service
    metadata: {name: web}
    spec: {selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}
  - apiVersion: v1
    kind: Service
    metadata: {name: web-np}
    spec: {type: NodePort, selector: {app: web}, externalIPs: [203.0.113.200], ports: [{port: 80, targetPort: 8080, nodePort: 30080}]}
  - apiVersion: v1
    kind: Service
    metadata: {name: web-lb}
    spec: {type: LoadBalancer, externalTrafficPolicy: Local, loadBalancerSourceRanges: [192.0.2.0/24], selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}
  - apiVersion: v1
    kind: Service
    metadata: {name: web-sticky}
    spec: {selector: {app: web}, sessionAffinity: ClientIP, ports: [{port: 80, targetPort: 8080}]}
`, iface, encap, mode)
}

// The two walks below cross each of the 12 ordered pairs of the four
// modes (nftables, iptables, ipvs, none) exactly once: natively the 6
// among nftables, iptables and none, in the VM the 6 to and from ipvs
// (an Eulerian circuit of each graph). TestModeSwitchWalksCoverEveryPair
// checks that they do.
var (
	nativeSwitchWalk = []string{"nftables", "iptables", "none", "nftables", "none", "iptables", "nftables"}
	ipvsSwitchWalk   = []string{"iptables", "ipvs", "nftables", "ipvs", "none", "ipvs", "iptables"}
)

// TestModeSwitchCleanup: every switch among nftables, iptables and none,
// natively, routed pods over VXLAN.
func TestModeSwitchCleanup(t *testing.T) {
	ktest.RequireFeature(t, kernel.FeatureVXLAN)
	s := upTestLab(t, "kdt-msc", switchLab("routed", "vxlan", nativeSwitchWalk[0]))
	checkModeSwitches(t, s, nativeSwitchWalk, 30*time.Second)
}

// TestModeSwitchCleanupIPVS runs in the test VM: every switch to and from
// ipvs, bridge mode with per-peer IPIP tunnels (tun-...) across subnets.
func TestModeSwitchCleanupIPVS(t *testing.T) {
	ktest.RequireFeature(t, kernel.FeatureIPIP)
	ktest.RequireFeature(t, kernel.FeatureIPVS)
	ktest.RequireFeature(t, kernel.FeatureDummy)
	s := upTestLab(t, "kdt-mscv", switchLab("bridge", "ipip", ipvsSwitchWalk[0]))
	checkModeSwitches(t, s, ipvsSwitchWalk, 120*time.Second)
}

// TestModeSwitchWalksCoverEveryPair: the two walks together cross every
// ordered pair of distinct modes once, natively those without ipvs.
func TestModeSwitchWalksCoverEveryPair(t *testing.T) {
	modes := []string{"nftables", "iptables", "ipvs", "none"}
	crossed := map[[2]string]string{}
	for _, w := range []struct {
		name string
		seq  []string
	}{{"native", nativeSwitchWalk}, {"VM", ipvsSwitchWalk}} {
		for i := 1; i < len(w.seq); i++ {
			pair := [2]string{w.seq[i-1], w.seq[i]}
			if prev, ok := crossed[pair]; ok {
				t.Errorf("%s -> %s crossed twice (%s walk, then %s)", pair[0], pair[1], prev, w.name)
			}
			if native := pair[0] != "ipvs" && pair[1] != "ipvs"; native != (w.name == "native") {
				t.Errorf("%s walk crosses %s -> %s, which belongs to the other walk", w.name, pair[0], pair[1])
			}
			crossed[pair] = w.name
		}
	}
	for _, from := range modes {
		for _, to := range modes {
			if _, ok := crossed[[2]string{from, to}]; from != to && !ok {
				t.Errorf("no walk crosses %s -> %s", from, to)
			}
		}
	}
}
