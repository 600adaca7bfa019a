package k8s

import (
	"context"
	"time"

	"k8s.io/client-go/tools/cache"

	"github.com/anet-dev/anet/daemon/api"
)

// Labeler is what the label sync needs of the endpoint manager.
type Labeler interface {
	Records() []api.Endpoint
	SetLabels(a api.Attachment, labels map[string]string) (bool, error)
}

// SyncLabels keeps each endpoint's record of its pod's labels (what policy
// will select on) in step with the API: on pod events and every interval.
// A pod is matched by namespace/name and, when the runtime gave it, UID.
func (c *Client) SyncLabels(ctx context.Context, eps Labeler, interval time.Duration) {
	kick := make(chan struct{}, 1)
	poke := func(any) {
		select {
		case kick <- struct{}{}:
		default:
		}
	}
	reg, err := c.pods.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    poke,
		UpdateFunc: func(_, o any) { poke(o) },
	})
	if err == nil {
		defer func() { _ = c.pods.RemoveEventHandler(reg) }()
	}
	if !cache.WaitForCacheSync(ctx.Done(), c.pods.HasSynced) {
		return
	}
	lister := c.podFactory.Core().V1().Pods().Lister()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		for _, ep := range eps.Records() {
			if ep.Pod.Name == "" || ep.Pod.Namespace == "" {
				continue
			}
			pod, err := lister.Pods(ep.Pod.Namespace).Get(ep.Pod.Name)
			if err != nil || (ep.Pod.UID != "" && string(pod.UID) != ep.Pod.UID) {
				continue
			}
			if changed, err := eps.SetLabels(ep.Attachment, pod.Labels); err != nil {
				c.log.Warn("recording pod labels", "pod", ep.Pod.Namespace+"/"+ep.Pod.Name, "err", err)
			} else if changed {
				c.log.Debug("endpoint labels updated", "pod", ep.Pod.Namespace+"/"+ep.Pod.Name, "labels", pod.Labels)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-kick:
		case <-tick.C:
		}
	}
}
