package k8s

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"

	"github.com/anet-dev/anet/daemon/api"
)

func node(name string, cidrs []string, addrs ...corev1.NodeAddress) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.NodeSpec{PodCIDRs: cidrs}, Status: corev1.NodeStatus{Addresses: addrs}}
}

func TestNodeInfo(t *testing.T) {
	n := node("a", []string{"10.244.3.0/24", "fd00::/64"},
		corev1.NodeAddress{Type: corev1.NodeHostName, Address: "a"},
		corev1.NodeAddress{Type: corev1.NodeExternalIP, Address: "192.0.2.9"},
		corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "fd01::1"},
		corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "10.77.0.5"})
	info, err := nodeInfo(n)
	if err != nil {
		t.Fatal(err)
	}
	if info.PodCIDR != netip.MustParsePrefix("10.244.3.0/24") || len(info.PodCIDRs) != 2 {
		t.Errorf("pod CIDRs %v %v", info.PodCIDR, info.PodCIDRs)
	}
	if info.InternalIPv4() != netip.MustParseAddr("10.77.0.5") || len(info.InternalIPs) != 2 {
		t.Errorf("internal IPs %v", info.InternalIPs)
	}
	// The singular field of old objects counts too; none is "not yet".
	old := node("b", nil)
	old.Spec.PodCIDR = "10.244.4.0/24"
	if info, _ := nodeInfo(old); info.PodCIDR != netip.MustParsePrefix("10.244.4.0/24") {
		t.Errorf("spec.podCIDR ignored: %v", info.PodCIDR)
	}
	if info, _ := nodeInfo(node("c", nil)); info.PodCIDR.IsValid() {
		t.Errorf("pod CIDR without one: %v", info.PodCIDR)
	}
	if _, err := nodeInfo(node("d", []string{"garbage"})); err == nil {
		t.Error("bad CIDR accepted")
	}
}

func TestDesiredRoutes(t *testing.T) {
	ip := func(a string) corev1.NodeAddress { return corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: a} }
	rs := DesiredRoutes("a", []*corev1.Node{
		node("a", []string{"10.244.0.0/24"}, ip("10.77.0.1")),
		node("b", []string{"10.244.1.0/24"}, ip("10.77.0.2")),
		node("c", nil, ip("10.77.0.3")),             // no CIDR yet
		node("d", []string{"10.244.3.0/24"}),        // no address yet
		node("e", []string{"bad"}, ip("10.77.0.5")), // unreadable
	})
	if len(rs) != 1 || rs[0].Dst.String() != "10.244.1.0/24" || rs[0].Gateway.String() != "10.77.0.2" || rs[0].Node != "b" {
		t.Errorf("routes = %v", rs)
	}
}

func TestNetworkAvailable(t *testing.T) {
	n := node("a", nil)
	if networkAvailable(n) {
		t.Error("no condition counted as available")
	}
	n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeNetworkUnavailable, Status: corev1.ConditionTrue, Reason: "NoRouteCreated"}}
	if networkAvailable(n) {
		t.Error("NetworkUnavailable=True counted as available")
	}
	n.Status.Conditions[0] = corev1.NodeCondition{Type: corev1.NodeNetworkUnavailable, Status: corev1.ConditionFalse, Reason: NetworkReason}
	if !networkAvailable(n) {
		t.Error("anet's condition not recognised")
	}
}

func TestSuspectAndGone(t *testing.T) {
	now := time.Now()
	old := now.Add(-time.Minute)
	ep := func(ns, name, uid string, created time.Time) api.Endpoint {
		return api.Endpoint{EndpointRequest: api.EndpointRequest{Pod: api.PodRef{Namespace: ns, Name: name, UID: uid}}, Created: created}
	}
	pod := func(ns, name, uid, nodeName string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(uid)}, Spec: corev1.PodSpec{NodeName: nodeName}}
	}
	ix := newPodIndex([]*corev1.Pod{pod("default", "web", "u1", "n1")})
	grace := 30 * time.Second
	for _, c := range []struct {
		what string
		ep   api.Endpoint
		want bool
	}{
		{"known uid", ep("default", "web", "u1", old), false},
		{"unknown uid", ep("default", "web", "u2", old), true},
		{"known name, no uid", ep("default", "web", "", old), false},
		{"unknown name, no uid", ep("default", "db", "", old), true},
		{"young", ep("default", "db", "u9", now.Add(-5*time.Second)), false},
		{"no pod named", ep("", "", "", old), false},
	} {
		if got := suspect(c.ep, ix, now, grace); got != c.want {
			t.Errorf("suspect(%s) = %v, want %v", c.what, got, c.want)
		}
	}

	notFound := apierrors.NewNotFound(schema.GroupResource{Resource: "pods"}, "db")
	e := ep("default", "db", "u9", old)
	for _, c := range []struct {
		what string
		pod  *corev1.Pod
		err  error
		want bool
	}{
		{"not found", nil, notFound, true},
		{"API down", nil, errors.New("connection refused"), false},
		{"timeout", nil, apierrors.NewTimeoutError("slow", 1), false},
		{"same pod, informer late", pod("default", "db", "u9", "n1"), nil, false},
		{"same name, new pod", pod("default", "db", "u10", "n1"), nil, true},
		{"moved to another node", pod("default", "db", "u9", "n2"), nil, true},
	} {
		if got := gone(e, c.pod, c.err, "n1"); got != c.want {
			t.Errorf("gone(%s) = %v, want %v", c.what, got, c.want)
		}
	}
	// Without a UID only the node can tell a new pod of the same name.
	if gone(ep("default", "db", "", old), pod("default", "db", "u10", "n1"), nil, "n1") {
		t.Error("a pod of that name on this node judged gone")
	}
}

// TestStaticPods: the runtime names a static pod by the UID kubelet gave
// it (its config hash), which the API knows only as the
// kubernetes.io/config.mirror annotation of its mirror pod (issue 7,
// item 2).
func TestStaticPods(t *testing.T) {
	now := time.Now()
	old := now.Add(-time.Minute)
	const hash = "6d1b3bc0a3ff3f5f8c6e0d2a4a1c9e77" // kubelet's config hash: the static pod's UID
	mirror := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "web-n1", UID: "0c5e9d3a-7b7e-4a43-9e0e-5f9d5b6c1a2b",
			Labels: map[string]string{"app": "static"},
			Annotations: map[string]string{
				corev1.MirrorPodAnnotationKey: hash,
				"kubernetes.io/config.hash":   hash,
				"kubernetes.io/config.source": "file",
			}},
		Spec: corev1.PodSpec{NodeName: "n1"},
	}
	ep := api.Endpoint{EndpointRequest: api.EndpointRequest{Pod: api.PodRef{Namespace: "kube-system", Name: "web-n1", UID: hash}}, Created: old}
	ix := newPodIndex([]*corev1.Pod{mirror})
	if suspect(ep, ix, now, 30*time.Second) {
		t.Error("a static pod whose mirror pod is in the informer is suspect")
	}
	if gone(ep, mirror, nil, "n1") {
		t.Error("a static pod whose mirror pod the API returns judged gone")
	}
	// The mirror pod's own UID names it too (not what runtimes send, but
	// the same pod).
	byAPI := ep
	byAPI.Pod.UID = string(mirror.UID)
	if suspect(byAPI, ix, now, 30*time.Second) || gone(byAPI, mirror, nil, "n1") {
		t.Error("the mirror pod's own UID not matched")
	}
	// A changed static pod has a new hash: the old sandbox's endpoint is
	// another pod's by now.
	stale := ep
	stale.Pod.UID = "0000000000000000000000000000beef"
	if !suspect(stale, ix, now, 30*time.Second) || !gone(stale, mirror, nil, "n1") {
		t.Error("an endpoint of an earlier version of the static pod kept")
	}
	// A pod that merely has the annotation empty is not a mirror.
	plain := mirror.DeepCopy()
	plain.Annotations[corev1.MirrorPodAnnotationKey] = ""
	if !gone(ep, plain, nil, "n1") {
		t.Error("an empty mirror annotation matched a UID")
	}
	if runtimeUID(plain) != string(plain.UID) {
		t.Error("runtimeUID of a pod with an empty mirror annotation")
	}
}
