package policy

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/anet-dev/anet/daemon/identity"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// TestScale compiles 10 000 policies over 5 000 identities (100
// namespaces × 50 apps, 10 000 pods over 50 nodes) and logs the time; not
// a timed assertion. Each policy selects one app and allows one app of
// its namespace, one namespace by label, and a /24 on a numeric port or a
// range.
func TestScale(t *testing.T) {
	const namespaces, apps, podsPerApp, nodes, policies = 100, 50, 2, 50, 10000
	var in Input
	for n := range namespaces {
		in.Namespaces = append(in.Namespaces, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprint("ns", n), Labels: map[string]string{"team": fmt.Sprint("t", n%10)}}})
	}
	i := 0
	for n := range namespaces {
		for a := range apps {
			for range podsPerApp {
				ip := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
				in.Pods = append(in.Pods, &corev1.Pod{
					ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprint("p", i), Namespace: fmt.Sprint("ns", n), Labels: map[string]string{"app": fmt.Sprint("app", a)}},
					Spec:       corev1.PodSpec{NodeName: fmt.Sprint("node", i%nodes), Containers: []corev1.Container{{Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}}},
					Status:     corev1.PodStatus{PodIP: ip.String()},
				})
				i++
			}
		}
	}
	for n := range nodes {
		in.Nodes = append(in.Nodes, Node{Name: fmt.Sprint("node", n), Addrs: []netip.Addr{netip.AddrFrom4([4]byte{192, 168, byte(n >> 8), byte(n)})}})
	}
	end := int32(9000)
	for p := range policies {
		ns := p % namespaces
		app := (p / namespaces) % apps
		port := networkingv1.NetworkPolicyPort{Port: &intstr.IntOrString{IntVal: int32(1000 + p%5000)}}
		if p%3 == 0 {
			port = networkingv1.NetworkPolicyPort{Port: &intstr.IntOrString{IntVal: 8000}, EndPort: &end}
		}
		if p%7 == 0 {
			port = networkingv1.NetworkPolicyPort{Port: &intstr.IntOrString{Type: intstr.String, StrVal: "http"}}
		}
		in.Policies = append(in.Policies, &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprint("pol", p), Namespace: fmt.Sprint("ns", ns)},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprint("app", app)}},
				Ingress: []networkingv1.NetworkPolicyIngressRule{{
					From: []networkingv1.NetworkPolicyPeer{
						{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprint("app", (app+1)%apps)}}},
						{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": fmt.Sprint("t", p%10)}}, PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "app0"}}},
						{IPBlock: &networkingv1.IPBlock{CIDR: fmt.Sprintf("172.%d.%d.0/24", 16+p/256%16, p%256)}},
					},
					Ports: []networkingv1.NetworkPolicyPort{port},
				}},
				Egress: []networkingv1.NetworkPolicyEgressRule{{
					To:    []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprint("app", (app+2)%apps)}}}},
					Ports: []networkingv1.NetworkPolicyPort{port},
				}},
			},
		})
	}
	alloc := identity.NewLocal()
	in.Identity = func(k identity.Key) (uint32, bool) { id, err := alloc.Allocate(k); return id, err == nil }
	in.LocalNode = "node0"
	c := NewCompiler(Options{})
	start := time.Now()
	res := c.Compile(in)
	first := time.Since(start)
	start = time.Now()
	res2 := c.Compile(in)
	second := time.Since(start)
	rules := 0
	for _, ep := range res.Endpoints {
		rules += len(ep.Ingress) + len(ep.Egress)
	}
	ids := map[uint32]bool{}
	for _, id := range res.IPCache {
		if identity.IsPod(id) {
			ids[id] = true
		}
	}
	t.Logf("%d policies, %d pod identities, %d pods, %d ipcache entries: compile %v (again %v); %d local endpoints, %d rules",
		len(in.Policies), len(ids), len(in.Pods), len(res.IPCache), first, second, len(res.Endpoints), rules)
	if len(ids) != namespaces*apps || len(res.Problems) != 0 || len(res.Endpoints) != len(in.Pods)/nodes || rules == 0 {
		t.Fatalf("identities %d, problems %d, endpoints %d, rules %d", len(ids), len(res.Problems), len(res.Endpoints), rules)
	}
	for k, ep := range res.Endpoints {
		if d := Diff(ep, res2.Endpoints[k]); !d.Empty(ep) {
			t.Fatalf("%s: a recompile of the same input changed rules: %+v", k, d)
		}
	}
	checkResult(t, res)
}
