package apiserver

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/anet-dev/anet/daemon/api"
	"github.com/anet-dev/anet/daemon/identity"
	"github.com/anet-dev/anet/daemon/policy"
	"github.com/anet-dev/anet/daemon/policy/policytest"
)

// policyReconciler returns a reconciler of node "a" (not run yet) with
// pods x/a (app=a) and x/b (app=b) and x/allow-b: b may reach a on TCP 80.
func policyReconciler() (*policy.Reconciler, *identity.Local) {
	pod := func(name, ip string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: name, Labels: map[string]string{"app": name}},
			Spec: corev1.PodSpec{NodeName: "a"}, Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip}}
	}
	tcp, p80 := corev1.ProtocolTCP, intstr.FromInt32(80)
	c := &policytest.Cluster{
		NSs:  []*corev1.Namespace{{ObjectMeta: metav1.ObjectMeta{Name: "x", Labels: map[string]string{identity.NamespaceNameLabel: "x"}}}},
		Pods: []*corev1.Pod{pod("a", "10.244.1.5"), pod("b", "10.244.1.6")},
		Policies: []*networkingv1.NetworkPolicy{{
			ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "allow-b"},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "a"}},
				Ingress: []networkingv1.NetworkPolicyIngressRule{{
					From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "b"}}}},
					Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &p80}},
				}},
			},
		}},
	}
	alloc := identity.NewLocal()
	return policy.NewReconciler(policy.Config{Node: "a", Source: c, Datapath: policytest.NullDatapath{}, Alloc: alloc,
		Endpoints: func() map[string]uint32 { return map[string]uint32{"x/a": 7, "x/b": 8} }}), alloc
}

// TestPolicy: GET /v1/policy/{ns}/{name} and /v1/identities answer the
// policy reconciler's last run through the socket; 404 saying so while
// policy is off, 503 before the first run, 400 for a bad name, 404 for a
// pod that is no local endpoint.
func TestPolicy(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "anetd.sock")
	ln, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := New(nil, func() api.Status { return api.Status{Ready: true} }, slog.New(slog.DiscardHandler))
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
	c := api.NewClient(sock)
	ctx := context.Background()

	if _, err := c.EndpointPolicy(ctx, "x", "a"); !errors.Is(err, api.ErrNotFound) || !strings.Contains(err.Error(), "network policy is off") {
		t.Errorf("policy off: %v", err)
	}
	if _, err := c.ListIdentities(ctx); !errors.Is(err, api.ErrNotFound) || !strings.Contains(err.Error(), "network policy is off") {
		t.Errorf("identities, policy off: %v", err)
	}
	rec, alloc := policyReconciler()
	srv.SetPolicy(rec)
	if _, err := c.EndpointPolicy(ctx, "x", "a"); !errors.Is(err, api.ErrNotReady) {
		t.Errorf("before the first run: %v, want ErrNotReady", err)
	}
	rec.Sync()

	p, err := c.EndpointPolicy(ctx, "x", "a")
	if err != nil {
		t.Fatal(err)
	}
	bID, _ := alloc.Lookup(identity.KeyOf("x", nil, map[string]string{"app": "b"}))
	aID, _ := alloc.Lookup(identity.KeyOf("x", nil, map[string]string{"app": "a"}))
	if p.Identity.ID != aID || p.Identity.Labels["app"] != "a" || p.Ifindex != 7 || !p.Programmed || !p.Ingress.Isolated || p.Egress.Isolated ||
		len(p.Ingress.Rules) != 1 || p.Ingress.Rules[0].Port != 80 || p.Ingress.Rules[0].Protocol != "TCP" ||
		len(p.Ingress.Rules[0].Peers) != 1 || p.Ingress.Rules[0].Peers[0].ID != bID || p.Ingress.Rules[0].Peers[0].Namespace != "x" {
		t.Errorf("x/a: %+v", p)
	}
	ids, err := c.ListIdentities(ctx)
	if err != nil || len(ids) != 5 || ids[0].Name != "host" || ids[3].ID != min(aID, bID) || ids[3].Endpoints != 1 {
		t.Errorf("identities: %+v, %v", ids, err)
	}

	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
	for _, bad := range [][2]string{{"X", "a"}, {"x", "a_b"}, {"", "a"}} {
		// Past the client's own check, straight to the server.
		resp, err := hc.Get("http://anetd/v1/policy/" + bad[0] + "/" + bad[1])
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest && resp.StatusCode != http.StatusNotFound {
			t.Errorf("%q/%q: %d %s", bad[0], bad[1], resp.StatusCode, b)
		}
		if _, err := c.EndpointPolicy(ctx, bad[0], bad[1]); !errors.Is(err, api.ErrInvalid) {
			t.Errorf("client with %q/%q: %v, want ErrInvalid", bad[0], bad[1], err)
		}
	}
	if _, err := c.EndpointPolicy(ctx, "x", "nope"); !errors.Is(err, api.ErrNotFound) || !strings.Contains(err.Error(), "not an endpoint of node a") {
		t.Errorf("unknown pod: %v", err)
	}
	// On the wire: the stable field names scripts read.
	resp, err := hc.Get("http://anetd/v1/policy/x/a")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, s := range []string{`"isolated":true`, `"policies":["x/allow-b"]`, `"protocol":"TCP","port":80,"endPort":80`, `"kind":"pod"`, `"egress":{"isolated":false,"policies":[],"rules":[]}`} {
		if !strings.Contains(string(b), s) {
			t.Errorf("body lacks %s: %s", s, b)
		}
	}
	if strings.Contains(string(b), `"cidr"`) {
		t.Errorf("a pod identity carries a cidr: %s", b)
	}
}

// slowPolicy is a Policy whose WaitEndpoint takes delay (or until its
// context ends).
type slowPolicy struct {
	Policy
	delay time.Duration
	asked []string
}

func (p *slowPolicy) WaitEndpoint(ctx context.Context, namespace, name string) error {
	p.asked = append(p.asked, namespace+"/"+name)
	select {
	case <-time.After(p.delay):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// TestWaitPolicy: an ADD waits for the pod's policy only with a policy
// source and a wait set, and never longer than the wait.
func TestWaitPolicy(t *testing.T) {
	srv := New(nil, func() api.Status { return api.Status{Ready: true} }, slog.New(slog.DiscardHandler))
	r, _ := http.NewRequest("POST", "/", nil)
	pod := api.PodRef{Namespace: "x", Name: "a"}
	if waited, _ := srv.waitPolicy(r, pod); waited {
		t.Error("waited with policy off")
	}
	p := &slowPolicy{delay: 50 * time.Millisecond}
	srv.SetPolicy(p)
	if waited, _ := srv.waitPolicy(r, pod); waited {
		t.Error("waited with no wait set")
	}
	srv.SetPolicyWait(5 * time.Second)
	if waited, d := srv.waitPolicy(r, pod); !waited || d < p.delay {
		t.Errorf("waited %v for %v, want the policy's %v", waited, d, p.delay)
	}
	if waited, _ := srv.waitPolicy(r, api.PodRef{}); waited {
		t.Error("waited for an ADD without a pod")
	}
	p.delay = time.Hour
	srv.SetPolicyWait(100 * time.Millisecond)
	if waited, d := srv.waitPolicy(r, pod); !waited || d > 10*time.Second {
		t.Errorf("a policy that never comes: waited %v for %v, want the wait's bound", waited, d)
	}
	if !slices.Equal(p.asked, []string{"x/a", "x/a"}) {
		t.Errorf("asked for %v", p.asked)
	}
}
