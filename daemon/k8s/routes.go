package k8s

import (
	"context"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/tools/cache"

	"github.com/anet-dev/anet/daemon/routing"
)

// RouteTable is where routes to other nodes go (routing.Table in anetd).
type RouteTable interface {
	Sync([]routing.Route) error
}

// routeResync is how often routes are re-checked without a Node event
// (someone removed one of ours by hand) and how soon a failed sync retries.
const (
	routeResync = 60 * time.Second
	routeRetry  = 5 * time.Second
)

// DesiredRoutes computes the routes from a list of Nodes.
func DesiredRoutes(self string, nodes []*corev1.Node) []routing.Route {
	var rn []routing.Node
	for _, n := range nodes {
		info, err := nodeInfo(n)
		if err != nil {
			continue
		}
		rn = append(rn, routing.Node{Name: n.Name, PodCIDRs: info.PodCIDRs, InternalIP: info.InternalIPv4()})
	}
	return routing.Desired(self, rn)
}

// SyncRoutes keeps table in line with the Nodes: a route to every other
// node's pod CIDR via its InternalIP. It syncs once the node informer has
// listed (never from a partial cache), then on every Node event, and
// every routeResync. synced is called after the first successful sync.
// It returns when ctx ends; the routes stay.
func (c *Client) SyncRoutes(ctx context.Context, table RouteTable, synced func()) {
	kick := make(chan struct{}, 1)
	poke := func() {
		select {
		case kick <- struct{}{}:
		default:
		}
	}
	reg, err := c.nodes.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { poke() },
		UpdateFunc: func(oldObj, newObj any) { poke() },
		DeleteFunc: func(any) { poke() },
	})
	if err == nil {
		defer func() { _ = c.nodes.RemoveEventHandler(reg) }()
	}
	if !cache.WaitForCacheSync(ctx.Done(), c.nodes.HasSynced) {
		return
	}
	lister := c.factory.Core().V1().Nodes().Lister()
	tick := time.NewTicker(routeResync)
	defer tick.Stop()
	var retry <-chan time.Time
	first := true
	for {
		nodes, err := lister.List(labels.Everything())
		if err == nil {
			err = table.Sync(DesiredRoutes(c.node, nodes))
		}
		if err != nil {
			c.log.Warn("syncing routes to other nodes; retrying", "err", err, "in", routeRetry)
			retry = time.After(routeRetry)
		} else {
			retry = nil
		}
		if first {
			first = false
			if synced != nil {
				synced()
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-kick:
		case <-tick.C:
		case <-retry:
		}
	}
}
