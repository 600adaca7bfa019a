package k8s

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
)

// What the policy reconciler reads: every NetworkPolicy, Namespace, Node
// and Pod of the cluster (the pods of other nodes too: their addresses go
// into the ipcache), as listers and one change event.

// NetworkPolicies lists every NetworkPolicy in the informer's cache.
func (c *Client) NetworkPolicies() ([]*networkingv1.NetworkPolicy, error) {
	return c.factory.Networking().V1().NetworkPolicies().Lister().List(labels.Everything())
}

// NetworkPolicy returns one NetworkPolicy from the cache.
func (c *Client) NetworkPolicy(namespace, name string) (*networkingv1.NetworkPolicy, error) {
	return c.factory.Networking().V1().NetworkPolicies().Lister().NetworkPolicies(namespace).Get(name)
}

// Namespaces lists every Namespace in the informer's cache.
func (c *Client) Namespaces() ([]*corev1.Namespace, error) {
	return c.factory.Core().V1().Namespaces().Lister().List(labels.Everything())
}

// Nodes lists every Node in the informer's cache.
func (c *Client) Nodes() ([]*corev1.Node, error) {
	return c.factory.Core().V1().Nodes().Lister().List(labels.Everything())
}

// AllPods lists every Pod of the cluster in the informer's cache.
func (c *Client) AllPods() ([]*corev1.Pod, error) {
	return c.factory.Core().V1().Pods().Lister().List(labels.Everything())
}

// OnPolicyChange calls f whenever a NetworkPolicy, Namespace, Node or Pod
// of the cluster is added, changed or deleted (and for every one in the
// cache when registered). f says only that something changed: the
// reconciler reads the listers. The informers' goroutines call f: it must
// not block. synced reports when f has seen every object the informers
// listed; stop unregisters f.
func (c *Client) OnPolicyChange(f func()) (synced func() bool, stop func(), err error) {
	h := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { f() },
		UpdateFunc: func(_, _ any) { f() },
		DeleteFunc: func(any) { f() },
	}
	// A pod's status changes often (conditions, container states); only
	// what the policy model reads makes it an event.
	podH := cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { f() },
		UpdateFunc: func(o, n any) {
			op, ok1 := o.(*corev1.Pod)
			np, ok2 := n.(*corev1.Pod)
			if !ok1 || !ok2 || policyRelevant(op, np) {
				f()
			}
		},
		DeleteFunc: func(any) { f() },
	}
	informers := []cache.SharedIndexInformer{
		c.factory.Networking().V1().NetworkPolicies().Informer(),
		c.factory.Core().V1().Namespaces().Informer(),
		c.nodes,
		c.allPods,
	}
	var regs []cache.ResourceEventHandlerRegistration
	stop = func() {
		for i, r := range regs {
			_ = informers[i].RemoveEventHandler(r)
		}
	}
	for _, inf := range informers {
		handler := cache.ResourceEventHandler(h)
		if inf == c.allPods {
			handler = podH
		}
		r, err := inf.AddEventHandler(handler)
		if err != nil {
			stop()
			return nil, nil, fmt.Errorf("watching for policy changes: %w", err)
		}
		regs = append(regs, r)
	}
	synced = func() bool {
		for _, r := range regs {
			if !r.HasSynced() {
				return false
			}
		}
		return true
	}
	return synced, stop, nil
}

// policyRelevant reports whether a pod update changes what the policy
// model reads of it: labels, node, addresses, phase, host network,
// container ports.
func policyRelevant(o, n *corev1.Pod) bool {
	if !labels.Equals(o.Labels, n.Labels) || o.Spec.NodeName != n.Spec.NodeName ||
		o.Status.PodIP != n.Status.PodIP || len(o.Status.PodIPs) != len(n.Status.PodIPs) ||
		o.Status.Phase != n.Status.Phase || o.Spec.HostNetwork != n.Spec.HostNetwork ||
		(o.DeletionTimestamp == nil) != (n.DeletionTimestamp == nil) {
		return true
	}
	for i := range o.Status.PodIPs {
		if o.Status.PodIPs[i] != n.Status.PodIPs[i] {
			return true
		}
	}
	// Container ports are immutable but for in-place resizes of nothing
	// related; the spec generation covers the rest.
	return o.Generation != n.Generation
}

// EventRecorder returns a recorder of Kubernetes Events from component on
// this node (Events are written in the background; stop ends that).
func (c *Client) EventRecorder(component string) (rec record.EventRecorder, stop func()) {
	b := record.NewBroadcaster()
	b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: c.cs.CoreV1().Events("")})
	return b.NewRecorder(scheme.Scheme, corev1.EventSource{Component: component, Host: c.node}), b.Shutdown
}
