package k8s

import (
	"context"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/anet-dev/anet/daemon/api"
)

// Endpoints is what the endpoint reconciler needs of the endpoint manager.
type Endpoints interface {
	Records() []api.Endpoint
	Collect(a api.Attachment, created time.Time) (bool, error)
	SetLabels(a api.Attachment, labels map[string]string) (bool, error)
}

// DefaultGCGrace is how old an endpoint must be before it can be
// collected: the pod informer may not have seen a pod that the kubelet
// just created a sandbox for.
const DefaultGCGrace = 30 * time.Second

// runtimeUID is the UID by which the container runtime, and so the CNI
// plugin (K8S_POD_UID), knows an API pod. For most pods it is the pod's own
// UID. A static pod (from kubelet's staticPodPath or a URL) is not an API
// object: kubelet gives it a UID of its own, the hash of its
// configuration (pkg/kubelet/config/common.go: pod.UID = the hash, also
// annotated as kubernetes.io/config.hash), and the API sees it only as its
// mirror pod, which has another UID and carries the static pod's hash in
// the kubernetes.io/config.mirror annotation (pkg/kubelet/pod/mirror_client.go,
// CreateMirrorPod: annotation = getPodHash(pod) = config.hash). So a mirror
// pod stands for the runtime UID in that annotation.
func runtimeUID(p *corev1.Pod) string {
	if h, ok := p.Annotations[corev1.MirrorPodAnnotationKey]; ok && h != "" {
		return h
	}
	return string(p.UID)
}

// samePod says whether pod is the pod the runtime named uid: by its UID, or
// for a mirror pod by the UID of the static pod it stands for.
func samePod(pod *corev1.Pod, uid string) bool {
	return string(pod.UID) == uid || runtimeUID(pod) == uid
}

// podIndex is what the informer knows of this node's pods.
type podIndex struct {
	uids  map[string]bool // API UIDs and, for mirror pods, their static pods' UIDs
	names map[string]bool // namespace/name
}

func newPodIndex(pods []*corev1.Pod) podIndex {
	ix := podIndex{uids: map[string]bool{}, names: map[string]bool{}}
	for _, p := range pods {
		ix.uids[string(p.UID)] = true
		ix.uids[runtimeUID(p)] = true
		ix.names[p.Namespace+"/"+p.Name] = true
	}
	return ix
}

// suspect says whether an endpoint may belong to a pod that is gone and
// needs a live check: it names a pod, is older than grace, and the
// informer has no such pod on this node (by UID when known, else by name).
func suspect(ep api.Endpoint, ix podIndex, now time.Time, grace time.Duration) bool {
	if ep.Pod.Name == "" || ep.Pod.Namespace == "" {
		return false // not a pod we can look up (cnitool, tests): never collected here
	}
	if now.Sub(ep.Created) < grace {
		return false
	}
	if ep.Pod.UID != "" {
		return !ix.uids[ep.Pod.UID]
	}
	return !ix.names[ep.Pod.Namespace+"/"+ep.Pod.Name]
}

// gone judges a suspect by a live GET of its pod: the pod is gone when the
// API says NotFound, or it is another pod by now (another UID, or not on
// this node; a mirror pod is the static pod whose UID its annotation
// holds). Any other error means "don't know": keep.
//
// A static pod without a mirror pod (kubelet could not make one, e.g. its
// namespace does not exist) is NotFound, and so collected: the API has no
// way to tell it from a pod that is gone.
func gone(ep api.Endpoint, pod *corev1.Pod, err error, node string) bool {
	if apierrors.IsNotFound(err) {
		return true
	}
	if err != nil || pod == nil {
		return false
	}
	if ep.Pod.UID != "" && !samePod(pod, ep.Pod.UID) {
		return true
	}
	return pod.Spec.NodeName != "" && pod.Spec.NodeName != node
}

// ReconcileEndpoints keeps the endpoints in step with this node's pods, on
// pod events and every interval, once the pod informer has listed: an
// endpoint whose pod no longer exists is removed, and every other records
// its pod's labels (what policy will select on). Each removal is confirmed
// by a live GET, so neither an informer lagging behind nor an API outage
// removes a live pod's endpoint.
func (c *Client) ReconcileEndpoints(ctx context.Context, eps Endpoints, grace, interval time.Duration) {
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
		DeleteFunc: poke,
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
		pods, err := lister.List(labels.Everything())
		if err == nil {
			ix := newPodIndex(pods)
			now := time.Now()
			for _, ep := range eps.Records() {
				if suspect(ep, ix, now, grace) {
					c.collect(ctx, eps, ep)
					continue
				}
				c.syncLabels(eps, lister, ep)
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

// collect removes a suspect endpoint once a live GET says its pod is gone.
func (c *Client) collect(ctx context.Context, eps Endpoints, ep api.Endpoint) {
	gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	pod, err := c.cs.CoreV1().Pods(ep.Pod.Namespace).Get(gctx, ep.Pod.Name, metav1.GetOptions{})
	cancel()
	if !gone(ep, pod, err, c.node) {
		if err != nil && !apierrors.IsNotFound(err) {
			c.log.Debug("cannot check an endpoint's pod; keeping it", "pod", ep.Pod.Namespace+"/"+ep.Pod.Name, "err", err)
		}
		return
	}
	if _, err := eps.Collect(ep.Attachment, ep.Created); err != nil {
		c.log.Warn("collecting endpoint", "containerID", ep.ContainerID, "err", err)
	}
}

// syncLabels records the labels of an endpoint's pod, matched by
// namespace/name and, when the runtime gave it, UID (a static pod's
// labels are its mirror pod's).
func (c *Client) syncLabels(eps Endpoints, lister corelisters.PodLister, ep api.Endpoint) {
	if ep.Pod.Name == "" || ep.Pod.Namespace == "" {
		return
	}
	pod, err := lister.Pods(ep.Pod.Namespace).Get(ep.Pod.Name)
	if err != nil || (ep.Pod.UID != "" && !samePod(pod, ep.Pod.UID)) {
		return
	}
	if changed, err := eps.SetLabels(ep.Attachment, pod.Labels); err != nil {
		c.log.Warn("recording pod labels", "pod", ep.Pod.Namespace+"/"+ep.Pod.Name, "err", err)
	} else if changed {
		c.log.Debug("endpoint labels updated", "pod", ep.Pod.Namespace+"/"+ep.Pod.Name, "labels", pod.Labels)
	}
}
