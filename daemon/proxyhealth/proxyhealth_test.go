package proxyhealth

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func get(t *testing.T, h http.Handler, path string) (int, http.Header, map[string]any) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	var body map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatalf("%s: body %q: %v", path, rec.Body.String(), err)
	}
	return rec.Code, rec.Header(), body
}

// TestProxyHealth: /healthz and /livez answer as kube-proxy's do.
func TestProxyHealth(t *testing.T) {
	c := &clock{t: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)}
	var node *corev1.Node
	var nodeErr error = apierrors.NewNotFound(schema.GroupResource{Resource: "nodes"}, "n1")
	s := New(time.Minute, func() (*corev1.Node, error) { return node, nodeErr })
	s.now = c.now
	h := s.Handler()

	// Starting: healthy, no status yet; the Node is not known: /healthz
	// says not eligible.
	code, hdr, body := get(t, h, "/livez")
	if code != 200 || body["healthy"] != true || body["status"] != nil || body["nodeEligible"] != nil {
		t.Errorf("livez while starting: %d %v", code, body)
	}
	if hdr.Get("Content-Type") != "application/json" || hdr.Get("X-Content-Type-Options") != "nosniff" {
		t.Errorf("headers %v", hdr)
	}
	if body["currentTime"] != "2025-01-02T03:04:05Z" || body["lastUpdated"] != "2025-01-02T03:04:05Z" {
		t.Errorf("times %v %v (a healthy answer's lastUpdated is now)", body["currentTime"], body["lastUpdated"])
	}
	code, _, body = get(t, h, "/healthz")
	if code != 503 || body["nodeEligible"] != false || body["healthy"] != true || body["lastUpdated"] != "0001-01-01T00:00:00Z" {
		t.Errorf("healthz without a Node: %d %v", code, body)
	}
	node, nodeErr = &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}}, nil
	if code, _, body = get(t, h, "/healthz"); code != 200 || body["nodeEligible"] != true {
		t.Errorf("healthz: %d %v", code, body)
	}

	// Updated: the IPv4 proxier's status appears.
	s.Updated()
	c.add(10 * time.Second)
	code, _, body = get(t, h, "/healthz")
	st, _ := body["status"].(map[string]any)["IPv4"].(map[string]any)
	if code != 200 || st["healthy"] != true || st["lastUpdated"] != "2025-01-02T03:04:05Z" || body["lastUpdated"] != "2025-01-02T03:04:15Z" {
		t.Errorf("healthz after an update: %d %v", code, body)
	}
	// A change waiting, within the timeout: healthy; beyond it: not.
	s.QueuedUpdate()
	c.add(59 * time.Second)
	if code, _, _ = get(t, h, "/livez"); code != 200 {
		t.Errorf("livez with a change waiting 59s = %d", code)
	}
	s.QueuedUpdate() // a later change does not restart the wait
	c.add(time.Second)
	code, _, body = get(t, h, "/livez")
	st, _ = body["status"].(map[string]any)["IPv4"].(map[string]any)
	if code != 503 || body["healthy"] != false || st["healthy"] != false || body["lastUpdated"] != "2025-01-02T03:04:05Z" {
		t.Errorf("livez with a change waiting 60s: %d %v", code, body)
	}
	if code, _, _ = get(t, h, "/healthz"); code != 503 {
		t.Errorf("healthz unhealthy = %d", code)
	}
	s.Updated()
	if code, _, _ = get(t, h, "/healthz"); code != 200 {
		t.Errorf("healthz after catching up = %d", code)
	}
	// The autoscaler's taint, or a deletion under way: not eligible, alive.
	node.Spec.Taints = []corev1.Taint{{Key: ToBeDeletedTaint, Effect: corev1.TaintEffectNoSchedule}}
	if code, _, body = get(t, h, "/healthz"); code != 503 || body["nodeEligible"] != false {
		t.Errorf("healthz of a tainted node: %d %v", code, body)
	}
	if code, _, _ = get(t, h, "/livez"); code != 200 {
		t.Errorf("livez of a tainted node = %d", code)
	}
	node.Spec.Taints = nil
	node.DeletionTimestamp = &metav1.Time{Time: c.now()}
	if code, _, _ = get(t, h, "/healthz"); code != 503 {
		t.Errorf("healthz of a node being deleted = %d", code)
	}
	nodeErr = errors.New("cache broken")
	if s.NodeEligible() {
		t.Error("eligible without a Node")
	}
}

func TestBody(t *testing.T) {
	// What kube-proxy v1.35 writes (its dedented template, printed).
	want := "{\n\t\"service\": {\n\t\t\"namespace\": \"default\",\n\t\t\"name\": \"web\"\n\t},\n\t\"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}"
	if got := Body("default", "web", 2, true); got != want {
		t.Errorf("body %q\nwant %q", got, want)
	}
	var v struct {
		Service             struct{ Namespace, Name string }
		LocalEndpoints      int
		ServiceProxyHealthy bool
	}
	if err := json.Unmarshal([]byte(Body("a", `we"b`, 0, false)), &v); err != nil || v.Service.Name != `we"b` {
		t.Errorf("not JSON: %v %+v", err, v)
	}
	if !strings.Contains(Body("a", "b", 0, false), `"serviceProxyHealthy": false`) {
		t.Error("unhealthy body")
	}
}
