package verify

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/kdive/kdive/internal/echo"
)

// maxReply bounds what is read of an answer.
const maxReply = 64 << 10

// ProbeRequest is what a source is asked to send: Count requests to an
// HTTP URL (or datagrams to a UDP address), each on a new connection, so
// each a new load-balancing decision. It is also what `kdive probe` reads
// from its flags inside a pod of a cluster.
type ProbeRequest struct {
	// URL is http://HOST:PORT/PATH for HTTP; UDPAddr a HOST:PORT to send
	// datagrams to instead.
	URL     string
	UDPAddr string
	// BodySize > 0 POSTs a body of that many bytes (largeBody's pattern).
	BodySize int
	// Count is the number of requests (at least 1), Parallel how many
	// are in flight at once (at least 1).
	Count, Parallel int
	// Timeout bounds each request.
	Timeout time.Duration
}

// ProbeAnswer is one request's outcome: the HTTP status and body, the
// datagram answered, or the error in words (Timeout set when it was one).
// Its JSON is what `kdive probe` prints, one answer per line.
type ProbeAnswer struct {
	Code    int    `json:"code,omitempty"`
	Body    []byte `json:"body,omitempty"`
	Error   string `json:"error,omitempty"`
	Timeout bool   `json:"timeout,omitempty"`
}

// Err is the answer's error, nil when there was an answer.
func (a ProbeAnswer) Err() error {
	if a.Error == "" {
		return nil
	}
	return &probeError{msg: a.Error, timeout: a.Timeout}
}

type probeError struct {
	msg     string
	timeout bool
}

func (e *probeError) Error() string { return e.msg }

// DialFunc dials from wherever the probe runs: a lab namespace's
// DialContext, or a net.Dialer's inside a pod.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// Probe sends what r asks through dial and returns one answer per request,
// in order. It never fails as a whole: each answer carries its error.
func Probe(ctx context.Context, dial DialFunc, r ProbeRequest) []ProbeAnswer {
	count, parallel := max(r.Count, 1), max(min(r.Parallel, r.Count), 1)
	out := make([]ProbeAnswer, count)
	next := make(chan int)
	var wg sync.WaitGroup
	for range parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if r.UDPAddr != "" {
					out[i] = probeUDP(ctx, dial, r)
				} else {
					out[i] = probeHTTP(ctx, dial, r)
				}
			}
		}()
	}
	for i := range count {
		next <- i
	}
	close(next)
	wg.Wait()
	return out
}

// probeHTTP sends one request on a connection of its own (no keep-alive).
// The transport dials through dial: an http.Client's own goroutines are
// not in a lab's namespace.
func probeHTTP(ctx context.Context, dial DialFunc, r ProbeRequest) ProbeAnswer {
	tr := &http.Transport{DialContext: dial, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: r.Timeout}
	ctx, cancel := context.WithTimeout(ctx, r.Timeout)
	defer cancel()
	method, body := "GET", io.Reader(nil)
	if r.BodySize > 0 {
		method, body = "POST", bytes.NewReader(largeBytes(r.BodySize))
	}
	req, err := http.NewRequestWithContext(ctx, method, r.URL, body)
	if err != nil {
		return failed(err, r.Timeout)
	}
	resp, err := c.Do(req)
	if err != nil {
		return failed(err, r.Timeout)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxReply))
	if err != nil {
		return failed(err, r.Timeout)
	}
	return ProbeAnswer{Code: resp.StatusCode, Body: b}
}

// probeUDP sends datagrams until one is answered, at most three, each
// waiting a third of the timeout.
func probeUDP(ctx context.Context, dial DialFunc, r ProbeRequest) ProbeAnswer {
	c, err := dial(ctx, "udp", r.UDPAddr)
	if err != nil {
		return failed(err, r.Timeout)
	}
	defer c.Close()
	buf := make([]byte, maxReply)
	for range 3 {
		_ = c.SetDeadline(time.Now().Add(r.Timeout / 3))
		if _, err = c.Write([]byte("kdive verify")); err != nil {
			return failed(err, r.Timeout)
		}
		var n int
		if n, err = c.Read(buf); err == nil {
			return ProbeAnswer{Body: slices.Clone(buf[:n])}
		}
	}
	return failed(err, r.Timeout)
}

// largeBytes is a body of n bytes of a repeating alphabet.
func largeBytes(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte('a' + i%26)
	}
	return b
}

// failed turns a request error into an answer with a short reason.
func failed(err error, timeout time.Duration) ProbeAnswer {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	var ne net.Error
	msg := err.Error()
	switch {
	case isTimeout(err):
		return ProbeAnswer{Error: fmt.Sprintf("no answer within %s", timeout), Timeout: true}
	case errors.Is(err, syscall.ECONNREFUSED):
		msg = "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		msg = "connection reset"
	case errors.Is(err, syscall.ENETUNREACH):
		msg = "network unreachable"
	case errors.Is(err, syscall.EHOSTUNREACH):
		msg = "host unreachable"
	case errors.As(err, &ne):
		msg = ne.Error()
	}
	return ProbeAnswer{Error: msg}
}

func isTimeout(err error) bool {
	var ne net.Error
	var pe *probeError
	if errors.As(err, &pe) {
		return pe.timeout
	}
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) ||
		(errors.As(err, &ne) && ne.Timeout())
}

// echoReply reads an echo server's answer.
func echoReply(a ProbeAnswer, http bool) (echo.Reply, error) {
	var r echo.Reply
	if err := a.Err(); err != nil {
		return r, err
	}
	if http && a.Code != 200 {
		return r, fmt.Errorf("HTTP %d: %s", a.Code, strings.TrimSpace(string(a.Body)))
	}
	if err := json.Unmarshal(a.Body, &r); err != nil {
		return r, fmt.Errorf("not an echo reply: %q", a.Body)
	}
	return r, nil
}

// askHTTP sends a request to an echo server at addr from a source (a POST
// of bodySize bytes when it is not 0) and returns its reply.
func (e *env) askHTTP(ctx context.Context, from origin, addr netip.AddrPort, bodySize int) (echo.Reply, error) {
	a := from.probe(ctx, ProbeRequest{URL: "http://" + addr.String() + "/", BodySize: bodySize, Timeout: e.opts.RequestTimeout})
	return echoReply(a[0], true)
}

// askUDP sends datagrams to an echo server at addr until one is answered.
func (e *env) askUDP(ctx context.Context, from origin, addr netip.AddrPort) (echo.Reply, error) {
	a := from.probe(ctx, ProbeRequest{UDPAddr: addr.String(), Timeout: e.opts.RequestTimeout})
	return echoReply(a[0], false)
}

// clientIP is the address part of an echo reply's client field.
func clientIP(r echo.Reply) netip.Addr {
	ap, err := netip.ParseAddrPort(r.Client)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// probe is one request of a check: from a source to a target. run returns
// nil when the answer is what the check wants.
type probe struct {
	from, to string // for reports: "node-1", "kdive-verify/echo-0 (node-1)"
	addr     string
	run      func(ctx context.Context) error
}

// parallelism bounds the requests in flight: the machine is shared.
const parallelism = 8

// runProbes runs probes, a few at a time, and returns the result: the
// reason of a failure names the targets that failed and the first error;
// the details list every failed probe.
func runProbes(ctx context.Context, probes []probe, summary string) Result {
	errs := make([]error, len(probes))
	sem := make(chan struct{}, parallelism)
	var wg sync.WaitGroup
	for i, p := range probes {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			errs[i] = p.run(ctx)
		}()
	}
	wg.Wait()
	var sources, targets, details []string
	var first error
	for i, err := range errs {
		if err == nil {
			continue
		}
		p := probes[i]
		if first == nil {
			first = err
		}
		if !slices.Contains(sources, p.from) {
			sources = append(sources, p.from)
		}
		if !slices.Contains(targets, p.to) {
			targets = append(targets, p.to)
		}
		details = append(details, fmt.Sprintf("%s → %s (%s): %v", p.from, p.to, p.addr, err))
	}
	if len(details) == 0 {
		return pass(fmt.Sprintf("%d of %d: %s", len(probes), len(probes), summary))
	}
	reason := fmt.Sprintf("%d of %d failed, from %s to %s: %v", len(details), len(probes), listOf(sources), listOf(targets), first)
	if common := commonEnd(probes, errs); common != "" && len(details) > 1 {
		reason = fmt.Sprintf("%d of %d failed, each from or to %s (from %s to %s): %v", len(details), len(probes), common, listOf(sources), listOf(targets), first)
	}
	return fail(reason, details...)
}

// commonEnd is the source or target that every failed probe has, when
// there is one and not every probe of the check has it: the likely cause
// ("each from or to kdive-verify/echo-1 (node-2)").
func commonEnd(probes []probe, errs []error) string {
	var common []string
	first := true
	for i, err := range errs {
		if err == nil {
			continue
		}
		ends := []string{probes[i].from, probes[i].to}
		if first {
			common, first = ends, false
			continue
		}
		common = slices.DeleteFunc(common, func(c string) bool { return !slices.Contains(ends, c) })
	}
	for _, c := range common {
		all := true
		for _, p := range probes {
			all = all && (p.from == c || p.to == c)
		}
		if !all {
			return c
		}
	}
	return ""
}

// maxListed bounds the names a reason lists.
const maxListed = 4

func listOf(names []string) string {
	if len(names) > maxListed {
		return strings.Join(names[:maxListed], ", ") + fmt.Sprintf(" and %d more", len(names)-maxListed)
	}
	return strings.Join(names, ", ")
}
