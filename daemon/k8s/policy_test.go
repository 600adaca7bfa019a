package k8s

import (
	"context"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

// TestPolicyEvents: the listers see the whole cluster (pods of every
// node); a policy or a pod's labels changing is an event, a pod's
// condition changing is not.
func TestPolicyEvents(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "p", Labels: map[string]string{"app": "x"}},
		Spec: corev1.PodSpec{NodeName: "n2"}}
	cs := fake.NewClientset(pod, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "a"}},
		&networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "deny"}})
	c := newClient(cs, "n1", slog.New(slog.DiscardHandler))
	var n atomic.Int32
	synced, stop, err := c.OnPolicyChange(func() { n.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	c.Start(ctx)
	if !c.WaitForSync(ctx) {
		t.Fatal("no sync")
	}
	wait := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: timed out", what)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	wait("synced", synced)
	if pods, _ := c.AllPods(); len(pods) != 1 {
		t.Errorf("AllPods = %d pods, want the other node's pod", len(pods))
	}
	if ps, _ := c.NetworkPolicies(); len(ps) != 1 {
		t.Errorf("NetworkPolicies = %d", len(ps))
	}
	if nss, _ := c.Namespaces(); len(nss) != 1 {
		t.Errorf("Namespaces = %d", len(nss))
	}

	// A condition change: no event.
	base := n.Load()
	p2 := pod.DeepCopy()
	p2.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
	if _, err := cs.CoreV1().Pods("a").UpdateStatus(ctx, p2, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// A label change: an event (it comes after the condition's update).
	p3 := p2.DeepCopy()
	p3.Labels = map[string]string{"app": "y"}
	if _, err := cs.CoreV1().Pods("a").Update(ctx, p3, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	wait("label event", func() bool { return n.Load() > base })
	time.Sleep(100 * time.Millisecond)
	if got := n.Load() - base; got != 1 {
		t.Errorf("%d events for a condition and a label change, want 1", got)
	}
	if err := cs.NetworkingV1().NetworkPolicies("a").Delete(ctx, "deny", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	wait("policy event", func() bool { return n.Load() > base+1 })
}
