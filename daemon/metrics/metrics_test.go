package metrics

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/anet-dev/anet/daemon/metrics/metricstest"
	"github.com/anet-dev/anet/daemon/service"
)

// scrape serves GET /metrics from m's handler (in memory: no socket, so
// that it works from inside a test's network namespace) and parses it.
func scrape(t *testing.T, m *Metrics) metricstest.Families {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /metrics: %d\n%s", rec.Code, rec.Body)
	}
	if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("Content-Type %q, want the text format", ct)
	}
	fams, err := metricstest.Parse(rec.Body)
	if err != nil {
		t.Fatal(err)
	}
	return fams
}

func TestServicesIdentitiesLatency(t *testing.T) {
	m := New()
	var c service.Counters
	c.Services.Store(3)
	c.Frontends.Store(5)
	c.Backends.Store(7)
	c.Puts.Add(6)
	c.WriteErrors.Add(1)
	m.AddServices(&c)
	ran := false
	m.AddIdentities(func() (int, int, bool) { return 4, 1, ran })
	m.Latency("policy")(30 * time.Millisecond)
	m.Latency("policy")(2 * time.Second)

	fams := scrape(t, m)
	if _, ok := fams.Value("anet_identities", "kind", "pod"); ok {
		t.Error("anet_identities before the policy reconciler's first run")
	}
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"anet_services", nil, 3},
		{"anet_service_frontends", nil, 5},
		{"anet_service_backends", nil, 7},
		{"anet_service_map_writes_total", []string{"operation", "put"}, 6},
		{"anet_service_map_write_errors_total", nil, 1},
		{"anet_api_to_datapath_seconds", []string{"reconciler", "policy"}, 2}, // the count of observations
	} {
		if got, ok := fams.Value(c.name, c.labels...); !ok || got != c.want {
			t.Errorf("%s%v = %v (present %v), want %v", c.name, c.labels, got, ok, c.want)
		}
	}
	if typ := fams.Type("anet_api_to_datapath_seconds"); typ != "histogram" {
		t.Errorf("anet_api_to_datapath_seconds is a %q", typ)
	}
	h := fams["anet_api_to_datapath_seconds"].Metric[0].Histogram
	if s := h.GetSampleSum(); s < 2.03-1e-9 || s > 2.03+1e-9 {
		t.Errorf("latency sum %v, want 2.03", s)
	}
	if _, ok := fams.Value("go_goroutines"); !ok {
		t.Error("no Go runtime metrics")
	}

	ran = true
	fams = scrape(t, m)
	if got, _ := fams.Value("anet_identities", "kind", "pod"); got != 4 {
		t.Errorf("anet_identities{kind=pod} = %v, want 4", got)
	}
	if got, _ := fams.Value("anet_identities", "kind", "cidr"); got != 1 {
		t.Errorf("anet_identities{kind=cidr} = %v, want 1", got)
	}
}
