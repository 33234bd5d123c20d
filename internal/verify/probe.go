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
	"github.com/kdive/kdive/internal/kernel"
)

// maxReply bounds what is read of an answer.
const maxReply = 64 << 10

// httpDo sends one request from inside ns, on a connection of its own
// (no keep-alive: each request is a new connection, so a new load
// balancing decision). The transport dials through ns.DialContext: an
// http.Client's own goroutines are not in the namespace.
func httpDo(ctx context.Context, ns *kernel.NetNS, method, url string, body []byte, timeout time.Duration) (int, []byte, error) {
	tr := &http.Transport{DialContext: ns.DialContext, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: timeout}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return 0, nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxReply))
	return resp.StatusCode, b, err
}

// askHTTP sends a request to an echo server at addr (a POST of body when
// it is not nil) and returns its reply.
func (e *env) askHTTP(ctx context.Context, from *kernel.NetNS, addr netip.AddrPort, body []byte) (echo.Reply, error) {
	method := "GET"
	if body != nil {
		method = "POST"
	}
	var r echo.Reply
	code, b, err := httpDo(ctx, from, method, "http://"+addr.String()+"/", body, e.opts.RequestTimeout)
	if err != nil {
		return r, err
	}
	if code != http.StatusOK {
		return r, fmt.Errorf("HTTP %d: %s", code, strings.TrimSpace(string(b)))
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("not an echo reply: %q", b)
	}
	return r, nil
}

// askUDP sends datagrams to an echo server at addr until one is answered,
// at most three, each waiting a third of the request timeout.
func (e *env) askUDP(ctx context.Context, from *kernel.NetNS, addr netip.AddrPort) (echo.Reply, error) {
	var r echo.Reply
	c, err := from.DialContext(ctx, "udp", addr.String())
	if err != nil {
		return r, err
	}
	defer c.Close()
	buf := make([]byte, maxReply)
	for range 3 {
		_ = c.SetDeadline(time.Now().Add(e.opts.RequestTimeout / 3))
		if _, err = c.Write([]byte("kdive verify")); err != nil {
			return r, err
		}
		var n int
		if n, err = c.Read(buf); err == nil {
			if err := json.Unmarshal(buf[:n], &r); err != nil {
				return r, fmt.Errorf("not an echo reply: %q", buf[:n])
			}
			return r, nil
		}
	}
	return r, err
}

// describe turns a request error into a short reason.
func (e *env) describe(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	var ne net.Error
	switch {
	case isTimeout(err):
		return fmt.Sprintf("no answer within %s", e.opts.RequestTimeout)
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.Is(err, syscall.ENETUNREACH):
		return "network unreachable"
	case errors.Is(err, syscall.EHOSTUNREACH):
		return "host unreachable"
	case errors.As(err, &ne):
		return ne.Error()
	}
	return err.Error()
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) ||
		(errors.As(err, &ne) && ne.Timeout())
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
	return fail(fmt.Sprintf("%d of %d failed, from %s to %s: %v", len(details), len(probes), listOf(sources), listOf(targets), first), details...)
}

// maxListed bounds the names a reason lists.
const maxListed = 4

func listOf(names []string) string {
	if len(names) > maxListed {
		return strings.Join(names[:maxListed], ", ") + fmt.Sprintf(" and %d more", len(names)-maxListed)
	}
	return strings.Join(names, ", ")
}
