package agent

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// TestLivezWhileWaitingForTheAPIServer: an agent that has not synced yet,
// with nothing waiting (starting, or unable to reach the API server), is
// alive though not ready, as kube-proxy's /livez; one whose change has
// waited more than two periods is not. (Before, /livez failed until the
// first sync: an agent restarted during an API server outage was killed
// by its liveness probe and, in the kubelet's back-off, still down well
// after the API server returned; TestKubernetesFaults found it.)
func TestLivezWhileWaitingForTheAPIServer(t *testing.T) {
	code := func(hf http.HandlerFunc) int {
		w := httptest.NewRecorder()
		hf(w, httptest.NewRequest("GET", "/", nil))
		return w.Code
	}
	h := &health{period: 20 * time.Millisecond}
	h.part("podnet")
	h.part("proxy")
	if got := code(h.livez()); got != http.StatusOK {
		t.Errorf("/livez before the first sync, nothing waiting: %d, want 200", got)
	}
	if got := code(h.handler(true)); got != http.StatusServiceUnavailable {
		t.Errorf("/healthz before the first sync: %d, want 503", got)
	}
	h.changed("proxy")
	h.synced("proxy", errors.New("nft: broken"))
	if got := code(h.livez()); got != http.StatusOK {
		t.Errorf("/livez with a change waiting less than two periods: %d, want 200", got)
	}
	time.Sleep(2 * h.period) // not a wait: the change must wait this long
	if got := code(h.livez()); got != http.StatusServiceUnavailable {
		t.Errorf("/livez with a change waiting two periods: %d, want 503", got)
	}
	h.synced("proxy", nil)
	h.synced("podnet", nil)
	if got := code(h.livez()); got != http.StatusOK {
		t.Errorf("/livez once synced: %d, want 200", got)
	}
}
