// Package k8s connects anetd to the Kubernetes API: client-go informers for
// Nodes, Namespaces, Pods (of this node, and of the cluster for policy),
// Services, EndpointSlices and NetworkPolicies, the node's pod CIDR and addresses from its Node object,
// the node's NetworkUnavailable condition, native routes to the other
// nodes' pod CIDRs, the collection of endpoints whose pod is gone, and for
// the service proxy the Services and EndpointSlices themselves (listers
// and change events: what they mean is package service's business).
//
// It never flushes anything because a watch broke: informers keep their
// caches through an API outage and relist when it is back, routes change
// only when a Node is really gone or changed, and an endpoint is collected
// only after a live GET of its pod says the pod is gone.
package k8s

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
)

// RESTConfig returns how to reach the API server: the kubeconfig when one
// is given, the in-cluster config when KUBERNETES_SERVICE_HOST is set, and
// nil (standalone mode, no API) when neither.
func RESTConfig(kubeconfig string) (*rest.Config, error) {
	switch {
	case kubeconfig != "":
		c, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("--kubeconfig: %w", err)
		}
		return c, nil
	case os.Getenv("KUBERNETES_SERVICE_HOST") != "":
		c, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("in-cluster config: %w", err)
		}
		return c, nil
	}
	return nil, nil
}

// Client is anetd's connection to the API: a clientset and the informers.
type Client struct {
	cs   kubernetes.Interface
	node string
	log  *slog.Logger

	factory    informers.SharedInformerFactory
	podFactory informers.SharedInformerFactory
	nodes      cache.SharedIndexInformer
	pods       cache.SharedIndexInformer // this node's
	allPods    cache.SharedIndexInformer // the cluster's (policy)
	services   cache.SharedIndexInformer
	slices     cache.SharedIndexInformer
	synced     []cache.InformerSynced
}

// New returns a client for node. Nothing is contacted yet.
func New(cfg *rest.Config, node, userAgent string, log *slog.Logger) (*Client, error) {
	// client-go logs through klog: send it to anetd's log.
	klog.SetSlogLogger(log.With("from", "client-go"))
	cfg = rest.CopyConfig(cfg)
	cfg.UserAgent = userAgent
	if cfg.Timeout == 0 {
		cfg.Timeout = 30 * time.Second // never hang a list or a GET on a dead connection
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return newClient(cs, node, log), nil
}

func newClient(cs kubernetes.Interface, node string, log *slog.Logger) *Client {
	c := &Client{cs: cs, node: node, log: log}
	// No periodic resync: the reconcilers have their own timers, and an
	// informer resync replays the cache, which says nothing new.
	c.factory = informers.NewSharedInformerFactory(cs, 0)
	c.podFactory = informers.NewSharedInformerFactoryWithOptions(cs, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = "spec.nodeName=" + node
		}))
	c.nodes = c.factory.Core().V1().Nodes().Informer()
	c.pods = c.podFactory.Core().V1().Pods().Informer()
	c.allPods = c.factory.Core().V1().Pods().Informer()
	c.services = c.factory.Core().V1().Services().Informer()
	c.slices = c.factory.Discovery().V1().EndpointSlices().Informer()
	// A Service's slices by the Service's key, so that looking them up
	// does not scan every slice of the namespace.
	if err := c.slices.AddIndexers(cache.Indexers{sliceServiceIndex: sliceServiceKeys}); err != nil {
		panic(err) // only when the informer runs already or the index exists: a bug here
	}
	others := []cache.SharedIndexInformer{
		c.allPods,
		c.factory.Core().V1().Namespaces().Informer(),
		c.services,
		c.slices,
		c.factory.Networking().V1().NetworkPolicies().Informer(),
	}
	c.synced = []cache.InformerSynced{c.nodes.HasSynced, c.pods.HasSynced}
	for _, i := range others {
		c.synced = append(c.synced, i.HasSynced)
	}
	return c
}

// Clientset is the underlying clientset.
func (c *Client) Clientset() kubernetes.Interface { return c.cs }

// NodeInfo is what anetd takes from its Node object.
type NodeInfo struct {
	PodCIDR     netip.Prefix // spec.podCIDRs[0]
	PodCIDRs    []netip.Prefix
	InternalIPs []netip.Addr // status.addresses of type InternalIP
	Cached      bool         // from an earlier run, the API being unreachable
}

// nodeInfo reads a Node; PodCIDR is invalid while none is assigned.
func nodeInfo(n *corev1.Node) (NodeInfo, error) {
	var info NodeInfo
	cidrs := n.Spec.PodCIDRs
	if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
		cidrs = []string{n.Spec.PodCIDR}
	}
	for _, s := range cidrs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return info, fmt.Errorf("node %s: podCIDR %q: %w", n.Name, s, err)
		}
		info.PodCIDRs = append(info.PodCIDRs, p.Masked())
	}
	if len(info.PodCIDRs) > 0 {
		info.PodCIDR = info.PodCIDRs[0]
	}
	for _, a := range n.Status.Addresses {
		if a.Type != corev1.NodeInternalIP {
			continue
		}
		if ip, err := netip.ParseAddr(a.Address); err == nil {
			info.InternalIPs = append(info.InternalIPs, ip.Unmap())
		}
	}
	return info, nil
}

// InternalIPv4 is the node's first IPv4 InternalIP.
func (i NodeInfo) InternalIPv4() netip.Addr {
	for _, a := range i.InternalIPs {
		if a.Is4() {
			return a
		}
	}
	return netip.Addr{}
}

// WaitNode waits until this node's Node object exists and has a pod CIDR
// (kube-controller-manager assigns it with --allocate-node-cidrs), logging
// while it waits, and returns what anetd needs of it.
//
// cached is what a previous run learnt (invalid if none): when the API
// server cannot be reached for cachedAfter, anetd starts from it rather
// than leave the node without a CNI backend through an API outage; the
// informers catch up when the API is back.
func (c *Client) WaitNode(ctx context.Context, cached NodeInfo, cachedAfter time.Duration) (NodeInfo, error) {
	const logEvery = 10 * time.Second
	var lastLog time.Time
	start := time.Now()
	wait := 500 * time.Millisecond
	for {
		var why string
		gctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		n, err := c.cs.CoreV1().Nodes().Get(gctx, c.node, metav1.GetOptions{})
		cancel()
		switch {
		case apierrors.IsNotFound(err):
			why = "the Node object does not exist yet (kubelet registers it)"
		case err != nil:
			why = "cannot get the Node object: " + err.Error()
			if cached.PodCIDR.IsValid() && time.Since(start) >= cachedAfter && ctx.Err() == nil {
				c.log.Warn("API server unreachable; starting from the pod CIDR of the last run", "podCIDR", cached.PodCIDR, "err", err)
				cached.Cached = true
				return cached, nil
			}
		default:
			info, err := nodeInfo(n)
			if err != nil {
				return info, err
			}
			if info.PodCIDR.IsValid() {
				if !info.PodCIDR.Addr().Is4() {
					return info, fmt.Errorf("node %s: pod CIDR %s is not IPv4 (anet is IPv4 only)", c.node, info.PodCIDR)
				}
				return info, nil
			}
			why = "spec.podCIDRs is empty (kube-controller-manager --allocate-node-cidrs assigns it)"
		}
		if time.Since(lastLog) >= logEvery {
			c.log.Info("waiting for this node's pod CIDR", "node", c.node, "reason", why)
			lastLog = time.Now()
		}
		select {
		case <-ctx.Done():
			return NodeInfo{}, ctx.Err()
		case <-time.After(wait):
		}
		wait = min(wait*2, 5*time.Second)
	}
}

// CheckPodCIDR logs an error when the Node's pod CIDR, once the node
// informer has it, is not the one anetd runs with (a cached one from an
// earlier run while the API was away, and the Node was re-created since).
func (c *Client) CheckPodCIDR(ctx context.Context, running netip.Prefix) {
	if !cache.WaitForCacheSync(ctx.Done(), c.nodes.HasSynced) {
		return
	}
	n, err := c.factory.Core().V1().Nodes().Lister().Get(c.node)
	if err != nil {
		c.log.Warn("this node's Node object is not in the cache", "node", c.node, "err", err)
		return
	}
	info, err := nodeInfo(n)
	if err == nil && info.PodCIDR.IsValid() && info.PodCIDR != running {
		c.log.Error("the Node's pod CIDR differs from the one anetd runs with; restart anetd to take it",
			"node", c.node, "running", running, "node.spec.podCIDRs", info.PodCIDRs)
	}
}

// WatchAPI logs when the API server stops answering and when it is back
// (client-go retries quietly). The datapath is left as it is meanwhile.
func (c *Client) WatchAPI(ctx context.Context, every time.Duration) {
	up := true
	var since time.Time
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		rctx, cancel := context.WithTimeout(ctx, every)
		_, err := c.cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(rctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		switch {
		case err != nil && up:
			up, since = false, time.Now()
			c.log.Warn("API server unreachable; keeping the datapath as it is and retrying", "err", err)
		case err == nil && !up:
			up = true
			c.log.Info("API server reachable again; informers catch up", "after", time.Since(since).Round(time.Second))
		}
	}
}

// Start starts the informers. Handlers added later see the cache replayed.
func (c *Client) Start(ctx context.Context) {
	c.factory.Start(ctx.Done())
	c.podFactory.Start(ctx.Done())
}

// WaitForSync waits until every informer has listed once, logging while it
// waits. It returns false when ctx ends first.
func (c *Client) WaitForSync(ctx context.Context) bool {
	done := make(chan bool, 1)
	go func() { done <- cache.WaitForCacheSync(ctx.Done(), c.synced...) }()
	tick := time.NewTicker(10 * time.Second)
	defer tick.Stop()
	for {
		select {
		case ok := <-done:
			return ok
		case <-tick.C:
			c.log.Info("waiting for the informers to list (is the API server reachable?)")
		}
	}
}

// Network condition values anetd sets on its Node.
const (
	NetworkReason  = "AnetIsUp"
	networkMessage = "anet is running on this node"
)

// networkAvailable reports whether the node already says
// NetworkUnavailable=False for anet's reason.
func networkAvailable(n *corev1.Node) bool {
	for _, cond := range n.Status.Conditions {
		if cond.Type == corev1.NodeNetworkUnavailable {
			return cond.Status == corev1.ConditionFalse && cond.Reason == NetworkReason
		}
	}
	return false
}

// SetNetworkAvailable patches the node's status with the condition
// NetworkUnavailable=False (reason AnetIsUp), unless it says so already.
func (c *Client) SetNetworkAvailable(ctx context.Context) error {
	n, err := c.cs.CoreV1().Nodes().Get(ctx, c.node, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("getting node %s: %w", c.node, err)
	}
	if networkAvailable(n) {
		return nil
	}
	now := metav1.Now().UTC().Format(time.RFC3339)
	patch := fmt.Sprintf(`{"status":{"conditions":[{"type":%q,"status":"False","reason":%q,"message":%q,"lastTransitionTime":%q,"lastHeartbeatTime":%q}]}}`,
		corev1.NodeNetworkUnavailable, NetworkReason, networkMessage, now, now)
	if _, err := c.cs.CoreV1().Nodes().PatchStatus(ctx, c.node, []byte(patch)); err != nil {
		return fmt.Errorf("patching node %s status: %w", c.node, err)
	}
	c.log.Info("node condition set", "node", c.node, "NetworkUnavailable", "False", "reason", NetworkReason)
	return nil
}

// KeepNetworkAvailable sets the condition, retrying until it sticks, and
// sets it again whenever the node's object stops saying so (a node
// re-registered, someone else's controller). It returns when ctx ends.
func (c *Client) KeepNetworkAvailable(ctx context.Context) {
	kick := make(chan struct{}, 1)
	poke := func() {
		select {
		case kick <- struct{}{}:
		default:
		}
	}
	onOwn := func(obj any) {
		if n, ok := obj.(*corev1.Node); ok && n.Name == c.node && !networkAvailable(n) {
			poke()
		}
	}
	reg, err := c.nodes.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { onOwn(obj) },
		UpdateFunc: func(_, obj any) { onOwn(obj) },
	})
	if err == nil {
		defer func() { _ = c.nodes.RemoveEventHandler(reg) }()
	}
	poke()
	retry := time.Second
	var timer <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-kick:
		case <-timer:
		}
		timer = nil
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := c.SetNetworkAvailable(rctx)
		cancel()
		if err != nil && !errors.Is(err, context.Canceled) {
			c.log.Warn("cannot set the node's NetworkUnavailable condition; retrying", "err", err, "in", retry)
			timer = time.After(retry)
			retry = min(retry*2, 30*time.Second)
			continue
		}
		retry = time.Second
	}
}
