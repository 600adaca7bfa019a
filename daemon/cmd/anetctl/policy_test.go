package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/anet-dev/anet/daemon/api"
	"github.com/anet-dev/anet/daemon/apiserver"
	"github.com/anet-dev/anet/daemon/identity"
	"github.com/anet-dev/anet/daemon/policy"
	"github.com/anet-dev/anet/daemon/policy/policytest"
)

// reconciled is node n1 after one policy run: in namespace x, pods a,
// b (both registered) and c (not); x/allow lets b into a on TCP 80 and
// UDP 5000-5003 and a out to 192.0.2.0/24 on anything; x/deny-all
// isolates every pod of x for ingress.
func reconciled(t *testing.T) *policy.Reconciler {
	t.Helper()
	pod := func(name, ip string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: name, Labels: map[string]string{"app": name}},
			Spec: corev1.PodSpec{NodeName: "n1"}, Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip}}
	}
	tcp, udp := corev1.ProtocolTCP, corev1.ProtocolUDP
	p80, p5000, end := intstr.FromInt32(80), intstr.FromInt32(5000), int32(5003)
	c := &policytest.Cluster{
		NSs:  []*corev1.Namespace{{ObjectMeta: metav1.ObjectMeta{Name: "x", Labels: map[string]string{identity.NamespaceNameLabel: "x"}}}},
		Pods: []*corev1.Pod{pod("a", "10.244.1.5"), pod("b", "10.244.1.6"), pod("c", "10.244.1.7")},
		Policies: []*networkingv1.NetworkPolicy{{
			ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "allow"},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "a"}},
				Ingress: []networkingv1.NetworkPolicyIngressRule{{
					From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "b"}}}},
					Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &p80}, {Protocol: &udp, Port: &p5000, EndPort: &end}},
				}},
				Egress: []networkingv1.NetworkPolicyEgressRule{{
					To: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "192.0.2.0/24"}}},
				}},
			},
		}, {
			ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "deny-all"},
			Spec:       networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}},
		}},
	}
	r := policy.NewReconciler(policy.Config{Node: "n1", Source: c, Datapath: policytest.NullDatapath{}, Alloc: identity.NewLocal(),
		Endpoints: func() map[string]uint32 { return map[string]uint32{"x/a": 7, "x/b": 8} }})
	if !r.Sync() {
		t.Fatal("policy run incomplete")
	}
	return r
}

func servePolicy(t *testing.T, p apiserver.Policy) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "anetd.sock")
	ln, err := apiserver.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := apiserver.New(nil, func() api.Status { return api.Status{Ready: true} }, slog.New(slog.DiscardHandler))
	if p != nil {
		srv.SetPolicy(p)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
	return sock
}

// Identity numbers: the local allocator hands them out from 256 in the
// order of the keys (app=a, app=b, app=c); the first CIDR is 0x800001.
const wantPolicy = `Pod:       x/a
Node:      n1
Identity:  256 (x: app=a)
Endpoint:  ifindex 7, policy programmed
Ingress:   isolated (default deny) by x/allow, x/deny-all (the node itself is always allowed in)
Egress:    isolated (default deny) by x/allow

DIRECTION  PROTO  PORTS      PEERS
ingress    TCP    80         257 (x: app=b)
ingress    UDP    5000-5003  257 (x: app=b)
egress     any    any        8388609 (cidr:192.0.2.0/24)
`

const wantPolicyB = `Pod:       x/b
Node:      n1
Identity:  257 (x: app=b)
Endpoint:  ifindex 8, policy programmed
Ingress:   isolated (default deny) by x/deny-all (the node itself is always allowed in); no rule allows anything
Egress:    not isolated: everything allowed
`

const wantIdentities = `ID       KIND      NAMESPACE  LABELS                ENDPOINTS
1        reserved  -          reserved:host         -
2        reserved  -          reserved:world        -
3        reserved  -          reserved:remote-node  -
256      pod       x          app=a                 1
257      pod       x          app=b                 1
258      pod       x          app=c                 0
8388609  cidr      -          cidr:192.0.2.0/24     -
`

func TestPolicy(t *testing.T) {
	rec := reconciled(t)
	sock := servePolicy(t, rec)
	var out bytes.Buffer
	if err := run([]string{"--socket", sock, "policy", "x/a"}, &out); err != nil {
		t.Fatal(err)
	}
	if out.String() != wantPolicy {
		t.Errorf("policy x/a:\n%s\nwant:\n%s", out.String(), wantPolicy)
	}
	out.Reset()
	if err := run([]string{"--socket", sock, "policy", "x/b"}, &out); err != nil {
		t.Fatal(err)
	}
	if out.String() != wantPolicyB {
		t.Errorf("policy x/b:\n%s\nwant:\n%s", out.String(), wantPolicyB)
	}

	out.Reset()
	if err := run([]string{"--socket", sock, "policy", "x/a", "-o", "json"}, &out); err != nil {
		t.Fatal(err)
	}
	var got api.EndpointPolicy
	want, _ := rec.EndpointPolicy("x", "a")
	if err := json.Unmarshal(out.Bytes(), &got); err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("json: %v\n%s", err, out.String())
	}
	for _, s := range []string{`"isolated": true`, `"endPort": 5003`, `"cidr": "192.0.2.0/24"`, `"protocol": "any"`} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("json lacks %s:\n%s", s, out.String())
		}
	}

	for args, msg := range map[string]string{
		"policy foo":          `"foo" is not NAMESPACE/POD`,
		"policy":              "want NAMESPACE/POD",
		"policy X/a":          `namespace "X" is not a valid namespace name`,
		"policy x/nope":       "pod x/nope is not an endpoint of node n1",
		"policy x/a -o yaml":  "unknown format",
		"policy x/a extra":    "unexpected arguments",
		"identity list -o xx": "unknown format",
	} {
		err := run(append([]string{"--socket", sock}, strings.Fields(args)...), &out)
		if err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("%s: %v, want %q", args, err, msg)
		}
	}
}

func TestIdentityList(t *testing.T) {
	rec := reconciled(t)
	sock := servePolicy(t, rec)
	var out bytes.Buffer
	if err := run([]string{"--socket", sock, "identity", "list"}, &out); err != nil {
		t.Fatal(err)
	}
	if out.String() != wantIdentities {
		t.Errorf("identity list:\n%s\nwant:\n%s", out.String(), wantIdentities)
	}
	out.Reset()
	if err := run([]string{"--socket", sock, "id", "list", "-o", "json"}, &out); err != nil {
		t.Fatal(err)
	}
	var got []api.IdentityEntry
	want, _ := rec.Identities()
	if err := json.Unmarshal(out.Bytes(), &got); err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("json: %v\n%s", err, out.String())
	}
}

// TestPolicyOff: an anetd without policy says so, with an error (a
// non-zero exit), not an empty answer.
func TestPolicyOff(t *testing.T) {
	sock := servePolicy(t, nil)
	var out bytes.Buffer
	for _, args := range [][]string{{"policy", "x/a"}, {"identity", "list"}} {
		err := run(append([]string{"--socket", sock}, args...), &out)
		if err == nil || !strings.Contains(err.Error(), "network policy is off") || !strings.Contains(err.Error(), "--enable-network-policy=false") {
			t.Errorf("%v with policy off: %v", args, err)
		}
	}
	if out.Len() != 0 {
		t.Errorf("printed with policy off: %q", out.String())
	}
}
