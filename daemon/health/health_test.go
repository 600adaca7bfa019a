package health

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestHealth(t *testing.T) {
	st := NewState("starting")
	hs, err := Listen("127.0.0.1:0", st, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer hs.Shutdown(context.Background())
	base := "http://" + hs.Addr().String()
	if code, _ := get(t, base+"/healthz"); code != 200 {
		t.Errorf("healthz = %d", code)
	}
	st.SetReason("waiting for the pod CIDR")
	if code, body := get(t, base+"/readyz"); code != 503 || !strings.Contains(body, "waiting for the pod CIDR") {
		t.Errorf("readyz before ready = %d %q", code, body)
	}
	st.SetReady()
	if code, body := get(t, base+"/readyz"); code != 200 || body != "ok\n" {
		t.Errorf("readyz = %d %q", code, body)
	}
	// Latched: a later reason does not make it unready.
	st.SetReason("api server unreachable")
	if ok, _ := st.Ready(); !ok {
		t.Error("readiness flapped")
	}
	if _, err := Listen(hs.Addr().String(), st, slog.New(slog.DiscardHandler)); err == nil {
		t.Error("second listen on the same address succeeded")
	}
}
