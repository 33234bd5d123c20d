package lab

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kdive/kdive/internal/kernel"
)

// A lost packet or a late one? The restart test fails a connection whose
// SYN was sent twice, because a SYN dropped for want of a rule would be
// hidden by TCP's retransmission after 1 s. But a SYN can be sent again
// without being lost: in the test VM, when the busy host does not run qemu
// for over a second, the guest's timers fire on resume before its network
// softirq has carried the first SYN (and the same can happen to any
// process under enough load). Only node-1's restarts are under test, so
// node-1's namespace is where the question is answered: a packet capture
// there (an AF_PACKET socket sees every packet entering and leaving every
// interface of the namespace) records the test traffic's TCP packets, and
// a packet node-1 drops is one that entered and never left, or left
// without the service's translation (a request to a service address must
// leave for an endpoint, an endpoint's reply with the service's address).
// NAT rewrites addresses and ports but neither sequence numbers nor flags,
// so a packet is matched with its forwarded copy by those and its length.

// pktKey identifies a TCP segment across NAT.
type pktKey struct {
	seq, ack uint32
	flags    uint8
	payload  int
}

type capturedPkt struct {
	at       time.Time
	out      bool
	ifindex  int
	src, dst netip.AddrPort
	key      pktKey
}

func (p capturedPkt) describe(ifname string) string {
	dir := "in on"
	if p.out {
		dir = "out on"
	}
	return fmt.Sprintf("%s %s %s %s -> %s flags %#02x seq %d ack %d len %d",
		p.at.Format("15:04:05.000"), dir, ifname, p.src, p.dst, p.key.flags, p.key.seq, p.key.ack, p.key.payload)
}

// lossCapture records the TCP packets to or from ports entering and
// leaving a namespace.
type lossCapture struct {
	ns   *kernel.NetNS
	fd   int
	mu   sync.Mutex
	pkts []capturedPkt
	stop chan struct{}
	done chan struct{}
	err  error
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// portFilter is a classic BPF program keeping unfragmented IPv4 TCP
// packets from or to one of ports (on a SOCK_DGRAM packet socket, offset
// 0 is the network header whatever the link).
func portFilter(ports []uint16) []unix.SockFilter {
	const (
		ldB   = unix.BPF_LD | unix.BPF_B | unix.BPF_ABS
		ldH   = unix.BPF_LD | unix.BPF_H | unix.BPF_ABS
		ldHX  = unix.BPF_LD | unix.BPF_H | unix.BPF_IND
		ldxIP = unix.BPF_LDX | unix.BPF_B | unix.BPF_MSH
		jeq   = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
		jset  = unix.BPF_JMP | unix.BPF_JSET | unix.BPF_K
		ret   = unix.BPF_RET | unix.BPF_K
	)
	accept := 5 + 2*(1+len(ports)) // index of "ret accept"; "ret drop" follows it
	prog := []unix.SockFilter{
		{Code: ldB, K: 9}, // protocol
		{Code: jeq, K: unix.IPPROTO_TCP, Jf: uint8(accept + 1 - 2)},
		{Code: ldH, K: 6}, // fragment offset
		{Code: jset, K: 0x1fff, Jt: uint8(accept + 1 - 4)},
		{Code: ldxIP, K: 0}, // X = IP header length
	}
	for _, off := range []uint32{0, 2} { // source port, destination port
		prog = append(prog, unix.SockFilter{Code: ldHX, K: off})
		for _, p := range ports {
			i := len(prog)
			jf := uint8(0)
			if off == 2 && i == accept-1 {
				jf = 1 // the last port: no match is a drop
			}
			prog = append(prog, unix.SockFilter{Code: jeq, K: uint32(p), Jt: uint8(accept - i - 1), Jf: jf})
		}
	}
	return append(prog, unix.SockFilter{Code: ret, K: 0xffff}, unix.SockFilter{Code: ret, K: 0})
}

// startLossCapture captures in ns until finish.
func startLossCapture(t *testing.T, ns *kernel.NetNS, ports ...uint16) *lossCapture {
	t.Helper()
	c := &lossCapture{ns: ns, fd: -1, stop: make(chan struct{}), done: make(chan struct{})}
	err := ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return err
		}
		c.fd = fd
		return nil
	})
	if err != nil {
		t.Fatalf("packet capture in %s: %v", ns, err)
	}
	prog := portFilter(ports)
	if err := errors.Join(
		unix.SetsockoptSockFprog(c.fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}),
		unix.SetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 32<<20),
		unix.SetsockoptTimeval(c.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 200_000}),
	); err != nil {
		unix.Close(c.fd)
		t.Fatalf("packet capture in %s: %v", ns, err)
	}
	// Packets that came before the filter: the statistics restart too.
	_, _ = unix.GetsockoptTpacketStats(c.fd, unix.SOL_PACKET, unix.PACKET_STATISTICS)
	go c.run(ports)
	t.Cleanup(c.finish)
	return c
}

func (c *lossCapture) run(ports []uint16) {
	defer close(c.done)
	buf := make([]byte, 256) // headers are enough: the length is in them
	for {
		select {
		case <-c.stop:
			return
		default:
		}
		_, from, err := unix.Recvfrom(c.fd, buf, unix.MSG_TRUNC)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			c.err = err
			return
		}
		ll, ok := from.(*unix.SockaddrLinklayer)
		if p, ok2 := parseTCP(buf, ports); ok && ok2 {
			p.at, p.out, p.ifindex = time.Now(), ll.Pkttype == unix.PACKET_OUTGOING, ll.Ifindex
			c.mu.Lock()
			c.pkts = append(c.pkts, p)
			c.mu.Unlock()
		}
	}
}

func parseTCP(b []byte, ports []uint16) (capturedPkt, bool) {
	var p capturedPkt
	if len(b) < 20 || b[0]>>4 != 4 || b[9] != unix.IPPROTO_TCP {
		return p, false
	}
	ihl := int(b[0]&0xf) * 4
	if len(b) < ihl+14 {
		return p, false
	}
	total := int(binary.BigEndian.Uint16(b[2:4]))
	tcp := b[ihl:]
	src, dst := netip.AddrFrom4([4]byte(b[12:16])), netip.AddrFrom4([4]byte(b[16:20]))
	p.src = netip.AddrPortFrom(src, binary.BigEndian.Uint16(tcp[0:2]))
	p.dst = netip.AddrPortFrom(dst, binary.BigEndian.Uint16(tcp[2:4]))
	p.key = pktKey{
		seq: binary.BigEndian.Uint32(tcp[4:8]), ack: binary.BigEndian.Uint32(tcp[8:12]),
		flags: tcp[13], payload: total - ihl - int(tcp[12]>>4)*4,
	}
	for _, port := range ports {
		if p.src.Port() == port || p.dst.Port() == port {
			return p, true
		}
	}
	return p, false
}

// finish stops the capture; it may be called more than once.
func (c *lossCapture) finish() {
	select {
	case <-c.stop:
	default:
		close(c.stop)
		<-c.done
		unix.Close(c.fd)
	}
}

// forwardedAs says whether out is how node-1 should forward in: a
// request to a service port leaves for an endpoint (port endpointPort),
// an endpoint's reply leaves from the service's port.
func forwardedAs(in, out capturedPkt, endpointPort uint16) bool {
	switch {
	case in.key != out.key:
		return false
	case in.src.Port() == endpointPort:
		return out.src.Port() != endpointPort
	case in.dst.Port() != endpointPort:
		return out.dst.Port() == endpointPort
	}
	return true
}

// captureVerdict is what a finished capture shows.
type captureVerdict struct {
	in, out int
	dropped []capturedPkt // entered and never left, or not translated
	missed  uint32        // packets the socket could not keep: the capture is incomplete
	err     error
}

// verdict stops the capture and lists the packets that entered the
// namespace and did not leave it as forwardedAs says, leaving out those
// excused (a destination whose packets are dropped by design).
func (c *lossCapture) verdict(endpointPort uint16, excused func(capturedPkt) bool) captureVerdict {
	time.Sleep(time.Second) // not a wait: packets of the last requests still in flight are forwarded
	st, statErr := unix.GetsockoptTpacketStats(c.fd, unix.SOL_PACKET, unix.PACKET_STATISTICS)
	c.finish()
	v := captureVerdict{err: errors.Join(c.err, statErr)}
	if st != nil {
		v.missed = st.Drops
	}
	left := map[pktKey][]capturedPkt{} // each out copy matches one in copy
	for _, p := range c.pkts {
		if p.out {
			v.out++
			left[p.key] = append(left[p.key], p)
		}
	}
	for _, p := range c.pkts {
		if p.out {
			continue
		}
		v.in++
		outs := left[p.key]
		if i := slices.IndexFunc(outs, func(o capturedPkt) bool { return forwardedAs(p, o, endpointPort) }); i >= 0 {
			left[p.key] = slices.Delete(outs, i, i+1)
			continue
		}
		if !excused(p) {
			v.dropped = append(v.dropped, p)
		}
	}
	return v
}

// synCopies says how many copies of a connection's SYN entered the
// namespace and how many of those left it for an endpoint: the SYNs from
// client (its address and port) with one sequence number, the first
// group to enter after the dial began (a port is used again by later
// connections, each with its own initial sequence number). timing tells
// when each copy entered (after the dial began) and how long node-1 held it.
func (c *lossCapture) synCopies(client netip.AddrPort, dialed time.Time, endpointPort uint16) (in, out int, timing string) {
	var isn uint32
	var first time.Time
	for _, p := range c.pkts {
		if !p.out && p.src == client && p.key.flags&0x12 == 0x02 && !p.at.Before(dialed) && (first.IsZero() || p.at.Before(first)) {
			isn, first = p.key.seq, p.at
		}
	}
	var entered, left []time.Time
	for _, p := range c.pkts {
		switch {
		case p.key.flags&0x12 != 0x02 || p.key.seq != isn || first.IsZero():
		case !p.out && p.src == client:
			in++
			entered = append(entered, p.at)
		case p.out && p.dst.Port() == endpointPort:
			out++
			left = append(left, p.at)
		}
	}
	// Each copy that left is the latest one to have entered before it.
	held := make([]time.Duration, len(entered))
	for i := range held {
		held[i] = -1
	}
	for _, l := range left {
		for i := len(entered) - 1; i >= 0; i-- {
			if held[i] < 0 && !entered[i].After(l) {
				held[i] = l.Sub(entered[i])
				break
			}
		}
	}
	var ts []string
	for i, e := range entered {
		t := fmt.Sprintf("copy %d entered at +%s, ", i+1, e.Sub(dialed).Round(time.Millisecond))
		if held[i] < 0 {
			t += "never left for an endpoint"
		} else {
			t += fmt.Sprintf("left %s later", held[i].Round(time.Millisecond))
		}
		ts = append(ts, t)
	}
	return in, out, strings.Join(ts, "; ")
}

// lateSYN is a connection whose SYN was sent more than once.
type lateSYN struct {
	local, remote netip.AddrPort
	retrans       uint32
	at            time.Time
}

func (e *lateSYN) Error() string {
	return fmt.Sprintf("connection %s -> %s: SYN sent %d more times", e.local, e.remote, e.retrans)
}

// judgeLateSYNs tells, for each connection whose SYN went out again, a
// SYN lost before or in node-1 (fewer copies entered node-1 than the
// client sent, or fewer left it for an endpoint) from a late one (every
// copy entered and left for an endpoint); it returns their descriptions.
func (c *lossCapture) judgeLateSYNs(late []*lateSYN, endpointPort uint16) (lost, ok []string) {
	for _, l := range late {
		in, out, timing := c.synCopies(l.local, l.at, endpointPort)
		desc := fmt.Sprintf("%s %s: %d copies sent, %d entered node-1, %d left it for an endpoint (%s)", l.at.Format("15:04:05.000"), l, l.retrans+1, in, out, timing)
		if in == int(l.retrans)+1 && out == in {
			ok = append(ok, desc)
		} else {
			lost = append(lost, desc)
		}
	}
	return lost, ok
}

// describe prints the first n of ps, naming their interfaces.
func (c *lossCapture) describe(ps []capturedPkt, n int) string {
	var out []string
	for i, p := range ps {
		if i == n {
			out = append(out, fmt.Sprintf("... %d more", len(ps)-n))
			break
		}
		name := fmt.Sprint("if", p.ifindex)
		_ = c.ns.Do(func() error {
			if ifc, err := net.InterfaceByIndex(p.ifindex); err == nil {
				name = ifc.Name
			}
			return nil
		})
		out = append(out, p.describe(name))
	}
	return strings.Join(out, "\n  ")
}
