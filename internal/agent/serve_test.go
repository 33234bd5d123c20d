package agent

import (
	"encoding/json"
	"errors"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestHealthBodiesLeakNothing: /healthz and /livez, on a port every
// address reaches, answer kube-proxy's body alone whatever failed; the
// error goes to /status, on the node-local metrics port.
func TestHealthBodiesLeakNothing(t *testing.T) {
	const secret = `sync service default/db:pg: chain KUBE-SVC-SECRET: Device or resource busy`
	h := &health{period: time.Minute}
	h.synced("podnet", nil)
	h.synced("proxy", nil)
	h.changed("proxy")
	h.synced("proxy", errors.New(secret))

	get := func(hf http.HandlerFunc) (int, string) {
		w := httptest.NewRecorder()
		hf(w, httptest.NewRequest("GET", "/", nil))
		return w.Code, w.Body.String()
	}
	for _, c := range []struct {
		path string
		hf   http.HandlerFunc
		keys []string
	}{
		{"/healthz", h.handler(true), []string{"currentTime", "lastUpdated", "nodeEligible"}},
		{"/livez", h.livez(), []string{"currentTime", "lastUpdated"}},
	} {
		code, body := get(c.hf)
		if code != http.StatusOK {
			t.Errorf("%s within two periods of the failure: %d, want 200", c.path, code)
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(body), &m); err != nil {
			t.Fatalf("%s body %q: %v", c.path, body, err)
		}
		if got := slices.Sorted(maps.Keys(m)); !slices.Equal(got, c.keys) {
			t.Errorf("%s body has %v, want kube-proxy's %v: %s", c.path, got, c.keys, body)
		}
		if strings.Contains(body, "SECRET") || strings.Contains(body, "default/db") {
			t.Errorf("%s shows the error to anyone reaching the node: %s", c.path, body)
		}
	}

	code, body := get(h.statusHandler)
	var st Status
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatalf("/status body %q: %v", body, err)
	}
	if code != http.StatusOK || !st.Healthy {
		t.Errorf("/status: %d healthy=%v, want 200 and healthy within the window: %s", code, st.Healthy, body)
	}
	if p := st.Parts["proxy"]; p.LastError != secret || p.PendingSince.IsZero() || !p.Ready {
		t.Errorf("/status proxy part %+v, want ready, pending and the error %q", p, secret)
	}
	if p := st.Parts["podnet"]; p.LastError != "" || !p.PendingSince.IsZero() || !p.Ready {
		t.Errorf("/status podnet part %+v, want ready with nothing pending", p)
	}

	// Past two periods the change is stuck: both say so, by status code.
	h.mu.Lock()
	h.parts["proxy"].pendingFrom = time.Now().Add(-3 * time.Minute)
	h.mu.Unlock()
	if code, body := get(h.handler(true)); code != http.StatusServiceUnavailable || strings.Contains(body, "SECRET") {
		t.Errorf("/healthz with a change stuck for 3 periods: %d %s, want 503 with kube-proxy's body", code, body)
	}
	if code, body := get(h.statusHandler); code != http.StatusServiceUnavailable || !strings.Contains(body, "SECRET") {
		t.Errorf("/status with a change stuck for 3 periods: %d %s, want 503 naming the error", code, body)
	}
}
