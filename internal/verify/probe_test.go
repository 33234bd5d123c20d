package verify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestProbe(t *testing.T) {
	var d net.Dialer
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %d", r.Method, len(b))
	}))
	defer srv.Close()
	ctx := context.Background()

	answers := Probe(ctx, d.DialContext, ProbeRequest{URL: srv.URL, Count: 5, Parallel: 2, Timeout: 2 * time.Second})
	if len(answers) != 5 {
		t.Fatalf("%d answers, want 5", len(answers))
	}
	for _, a := range answers {
		if a.Err() != nil || a.Code != 200 || string(a.Body) != "GET 0" {
			t.Errorf("answer %+v, want 200 GET", a)
		}
	}
	if a := Probe(ctx, d.DialContext, ProbeRequest{URL: srv.URL, BodySize: 1001, Timeout: 2 * time.Second}); string(a[0].Body) != "POST 1001" {
		t.Errorf("POST of 1001 bytes: %+v", a[0])
	}

	// A closed port refuses; a server that never answers times out.
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := closed.Addr().String()
	closed.Close()
	a := Probe(ctx, d.DialContext, ProbeRequest{URL: "http://" + addr + "/", Timeout: time.Second})[0]
	if a.Error != "connection refused" || a.Timeout || isTimeout(a.Err()) {
		t.Errorf("to a closed port: %+v", a)
	}
	silent, _ := net.Listen("tcp", "127.0.0.1:0")
	defer silent.Close()
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	a = Probe(ctx, d.DialContext, ProbeRequest{URL: "http://" + silent.Addr().String() + "/", Timeout: 300 * time.Millisecond})[0]
	if !a.Timeout || a.Error != "no answer within 300ms" {
		t.Errorf("to a silent server: %+v", a)
	}
	// What `kdive probe` prints reads back as the same error.
	b, _ := json.Marshal(a)
	var back ProbeAnswer
	if err := json.Unmarshal(b, &back); err != nil || !isTimeout(back.Err()) || back.Err().Error() != a.Error {
		t.Errorf("JSON round trip of %s: %+v, %v", b, back, err)
	}

	// UDP: a datagram answered.
	pc, _ := net.ListenPacket("udp", "127.0.0.1:0")
	defer pc.Close()
	go func() {
		buf := make([]byte, 100)
		n, from, err := pc.ReadFrom(buf)
		if err == nil {
			pc.WriteTo(append([]byte("echo "), buf[:n]...), from)
		}
	}()
	a = Probe(ctx, d.DialContext, ProbeRequest{UDPAddr: pc.LocalAddr().String(), Timeout: 3 * time.Second})[0]
	if a.Err() != nil || string(a.Body) != "echo kdive verify" {
		t.Errorf("UDP: %+v", a)
	}
}

func TestRunProbesNamesTheCommonEnd(t *testing.T) {
	broken := errors.New("no answer within 2s")
	mk := func(from, to string, err error) probe {
		return probe{from: from, to: to, addr: "a", run: func(context.Context) error { return err }}
	}
	probes := []probe{
		mk("pod-a", "pod-b", nil), mk("pod-a", "pod-c", broken),
		mk("pod-c", "pod-a", broken), mk("pod-b", "pod-a", nil),
		mk("pod-b", "pod-c", broken), mk("pod-c", "pod-b", broken),
	}
	r := runProbes(context.Background(), probes, "")
	if r.OK || !strings.HasPrefix(r.Reason, "4 of 6 failed, each from or to pod-c (") || len(r.Details) != 4 {
		t.Errorf("result %+v", r)
	}
	// No end in common: the plain reason.
	probes[1], probes[5] = mk("pod-a", "pod-c", nil), mk("pod-c", "pod-b", nil)
	probes[0] = mk("pod-a", "pod-b", broken)
	r = runProbes(context.Background(), probes, "")
	if r.OK || strings.Contains(r.Reason, "each from or to") {
		t.Errorf("result %+v", r)
	}
	probes = []probe{mk("pod-a", "pod-b", nil)}
	if r := runProbes(context.Background(), probes, "fine"); !r.OK || r.Summary != "1 of 1: fine" {
		t.Errorf("result %+v", r)
	}
}
