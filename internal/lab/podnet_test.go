package lab

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/ktest"
	"github.com/kdive/kdive/internal/model"
)

// podLab is a lab with a pod on each node (two on n1) for pod-network
// tests: n1 and n2 share subnet a, n3 is alone in subnet b.
func podLab(iface, encap, policy string) string {
	pod := func(name, node string) string {
		return fmt.Sprintf(`
  - apiVersion: v1
    kind: Pod
    metadata: {name: %s}
    spec:
      nodeName: %s
      containers:
      - name: echo
        image: kdive-echo
        ports: [{containerPort: 8080}, {containerPort: 5353, protocol: UDP}]`, name, node)
	}
	return fmt.Sprintf(`
apiVersion: kdive.dev/v1alpha1
kind: Lab
spec:
  podCIDR: 10.0.0.0/16
  blockSize: 24
  serviceCIDR: 10.1.0.0/16
  podNetwork: {interface: %s, encap: %s, encapPolicy: %s}
  proxy: {mode: nftables}
  subnets: [{name: a, cidr: 172.20.1.0/24}, {name: b, cidr: 172.20.2.0/24}]
  nodes: [{name: n1, subnet: a}, {name: n2, subnet: a}, {name: n3, subnet: b}]
  objects:%s%s%s%s
`, iface, encap, policy, pod("p1", "n1"), pod("p1b", "n1"), pod("p2", "n2"), pod("p3", "n3"))
}

type podInfo struct {
	name, node, ip string
	ns             *kernel.NetNS
}

func labPods(t *testing.T, s *State) []podInfo {
	t.Helper()
	st := GetStatus(context.Background(), s)
	var out []podInfo
	for _, p := range st.Pods {
		if p.IP == "" {
			t.Fatalf("pod %s has no IP", p.Name)
		}
		out = append(out, podInfo{name: p.Name, node: p.Node, ip: p.IP, ns: openNS(t, PodNetNS(s.Plan.Name, p.Namespace, p.Name))})
	}
	return out
}

// httpGet asks the echo server at ip:8080 from inside ns (see ask) and
// returns the pod that answered.
func httpGet(ns *kernel.NetNS, ip string, body []byte) (string, error) {
	return httpGetWithin(ns, ip, body, 3*time.Second)
}

func httpGetWithin(ns *kernel.NetNS, ip string, body []byte, timeout time.Duration) (string, error) {
	r, err := request(ns, net.JoinHostPort(ip, "8080"), body, timeout)
	return r.Pod, err
}

// udpDF sends one datagram of size bytes with the don't-fragment bit set
// from ns to ip:5353 and reports whether the echo came back.
func udpDF(ns *kernel.NetNS, ip string, size int) error {
	return ns.Do(func() error {
		c, err := net.DialTimeout("udp", net.JoinHostPort(ip, "5353"), time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		raw, err := c.(*net.UDPConn).SyscallConn()
		if err != nil {
			return err
		}
		var serr error
		if err := raw.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_DO)
		}); err != nil {
			return err
		}
		if serr != nil {
			return serr
		}
		if _, err := c.Write(make([]byte, size)); err != nil {
			return err
		}
		if err := c.SetReadDeadline(time.Now().Add(2 * time.Second)); err != nil {
			return err
		}
		_, err = c.Read(make([]byte, 2048))
		return err
	})
}

// checkPodNetwork sends real traffic between every pair of pods and from
// every node to every pod. With encap none, traffic across subnets must be
// dropped by the router; everything else must arrive.
func checkPodNetwork(t *testing.T, iface, encap, policy string) {
	name := fmt.Sprintf("kdt-%s-%s-%s", iface[:2], encap, policy[:2])
	s := upTestLab(t, name, podLab(iface, encap, policy))
	p := s.Plan
	pods := labPods(t, s)
	subnet := func(node string) string { n, _ := p.Node(node); return n.Subnet }
	crossDropped := encap == "none"
	_, before, _ := RouterCounters(context.Background(), p)
	for _, src := range pods {
		for _, dst := range pods {
			if src.name == dst.name {
				continue
			}
			if crossDropped && subnet(src.node) != subnet(dst.node) {
				got, err := httpGetWithin(src.ns, dst.ip, nil, 500*time.Millisecond)
				if err == nil {
					t.Errorf("%s -> %s across subnets with encap none was answered by %s; the router should drop it", src.name, dst.name, got)
				}
				continue
			}
			got, err := httpGet(src.ns, dst.ip, nil)
			if err != nil || got != dst.name {
				t.Errorf("%s (%s) -> %s (%s): answered by %q, %v", src.name, src.node, dst.name, dst.node, got, err)
			}
		}
	}
	if crossDropped {
		if _, after, _ := RouterCounters(context.Background(), p); after.Packets <= before.Packets {
			t.Errorf("router dropped %d -> %d packets; cross-subnet pod traffic should be dropped there", before.Packets, after.Packets)
		}
	}
	for _, n := range p.Nodes {
		ns := openNS(t, n.NetNS)
		for _, dst := range pods {
			if crossDropped && n.Subnet != subnet(dst.node) {
				continue
			}
			if got, err := httpGet(ns, dst.ip, nil); err != nil || got != dst.name {
				t.Errorf("node %s -> pod %s: %q, %v", n.Name, dst.name, got, err)
			}
		}
	}
	// No MTU black hole: a 64 KiB request, and a datagram with DF set
	// filling the pod MTU exactly, to a pod on another node (across
	// subnets when it is encapsulated).
	mtu := model.PodNetwork{Encap: model.Encap(encap)}.PodMTU(p.MTU)
	src, dst := pods[0], pods[len(pods)-1] // p1 on n1, p3 on n3
	if crossDropped {
		dst = pods[2] // p2 on n2, same subnet
	}
	if got, err := httpGet(src.ns, dst.ip, make([]byte, 64<<10)); err != nil || got != dst.name {
		t.Errorf("64 KiB %s -> %s: %q, %v", src.name, dst.name, got, err)
	}
	if err := udpDF(src.ns, dst.ip, mtu-28); err != nil {
		t.Errorf("DF datagram of %d bytes (pod MTU %d) %s -> %s: %v", mtu-28, mtu, src.name, dst.name, err)
	}
	if err := udpDF(src.ns, dst.ip, mtu-27); err == nil {
		t.Errorf("DF datagram one byte over the pod MTU %d went through; the pod MTU is not what the agent computed", mtu)
	}
}

func TestPodNetwork(t *testing.T) {
	ktest.RequireFeature(t, kernel.FeatureVXLAN)
	for _, iface := range []string{"routed", "bridge"} {
		for _, c := range [][2]string{{"none", "always"}, {"none", "cross-subnet"}, {"vxlan", "always"}, {"vxlan", "cross-subnet"}} {
			t.Run(iface+"-"+c[0]+"-"+c[1], func(t *testing.T) { checkPodNetwork(t, iface, c[0], c[1]) })
		}
	}
}

// TestPodNetworkIPIP needs the ipip module: natively it skips, `make test`
// runs it in the test VM.
func TestPodNetworkIPIP(t *testing.T) {
	ktest.RequireFeature(t, kernel.FeatureIPIP)
	for _, iface := range []string{"routed", "bridge"} {
		for _, policy := range []string{"always", "cross-subnet"} {
			t.Run(iface+"-ipip-"+policy, func(t *testing.T) { checkPodNetwork(t, iface, "ipip", policy) })
		}
	}
}
