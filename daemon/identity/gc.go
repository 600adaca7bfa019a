package identity

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/kubernetes"
)

// DefaultGCGrace is the default Collector grace: an identity is removed
// once it has been unused for this long. It outlasts the time between a
// pod's creation in the API and its sandbox's CNI ADD, and a label change's
// propagation to every anetd, by a wide margin.
const DefaultGCGrace = 15 * time.Minute

// Collector removes SecurityIdentity objects that no pod in the cluster
// uses any more. Any anetd may run one (no leader): each run lists the
// cluster's Pods and Namespaces, computes the keys in use, and deletes an
// object only when
//   - its key is not in use, and was not in use at any run of this
//     Collector during the last Grace (the first run that sees it unused
//     starts its clock; a run that sees it used again resets it),
//   - the object is older than Grace (a fresh allocation is never taken),
//   - this node's allocator does not hold it (CRD.Held), and
//   - it is still the version that was judged (a delete precondition on
//     its UID and resource version).
//
// Two collectors at once are safe: both judge the same objects, the second
// delete fails with NotFound or Conflict and is ignored. A pod that gets an
// identity just as a collector deletes it is covered by the allocator that
// holds it: it re-creates the object (see NewCRD). Invalid objects are
// never deleted (they are logged by the allocator; a human made them).
type Collector struct {
	Alloc *CRD
	Kube  kubernetes.Interface
	Grace time.Duration    // default DefaultGCGrace
	Now   func() time.Time // default time.Now

	unusedSince map[string]time.Time // object UID -> first run that saw it unused
}

// UsedKeys returns the identity keys of the cluster's pods (host-network
// pods and finished pods have none).
func UsedKeys(ctx context.Context, kube kubernetes.Interface) (map[Key]bool, error) {
	nsl, err := kube.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing namespaces: %w", err)
	}
	nsLabels := make(map[string]map[string]string, len(nsl.Items))
	for _, n := range nsl.Items {
		nsLabels[n.Name] = n.Labels
	}
	pods, err := kube.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing pods: %w", err)
	}
	used := map[Key]bool{}
	for _, p := range pods.Items {
		if p.Spec.HostNetwork || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		used[KeyOf(p.Namespace, nsLabels[p.Namespace], p.Labels)] = true
	}
	return used, nil
}

// Run makes one collection and returns the numbers it deleted.
func (g *Collector) Run(ctx context.Context) ([]uint32, error) {
	if g.Alloc == nil || g.Kube == nil {
		return nil, errors.New("identity: Collector needs Alloc and Kube")
	}
	grace, now := g.Grace, time.Now
	if grace == 0 {
		grace = DefaultGCGrace
	}
	if g.Now != nil {
		now = g.Now
	}
	if g.unusedSince == nil {
		g.unusedSince = map[string]time.Time{}
	}
	// The objects first, then the pods: an object created after the pod
	// list is not judged by it.
	l, err := g.Alloc.client.List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing SecurityIdentities: %w", err)
	}
	used, err := UsedKeys(ctx, g.Kube)
	if err != nil {
		return nil, err
	}
	t := now()
	seen := map[string]bool{}
	var deleted []uint32
	var errs []error
	for i := range l.Items {
		u := &l.Items[i]
		o, _, reason := parseObject(u)
		if reason != "" {
			continue
		}
		uid := string(o.uid)
		seen[uid] = true
		if used[o.key] || g.Alloc.Held(o.key) {
			delete(g.unusedSince, uid)
			continue
		}
		since, ok := g.unusedSince[uid]
		if !ok {
			g.unusedSince[uid] = t
			since = t
		}
		if t.Sub(since) < grace || t.Sub(u.GetCreationTimestamp().Time) < grace {
			continue
		}
		gone, err := g.delete(ctx, u)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		delete(g.unusedSince, uid)
		if !gone {
			continue
		}
		deleted = append(deleted, o.id)
		g.Alloc.log.Info("collected unused SecurityIdentity", "id", o.id, "key", o.key, "unusedFor", t.Sub(since).Round(time.Second))
	}
	for uid := range g.unusedSince {
		if !seen[uid] {
			delete(g.unusedSince, uid)
		}
	}
	return deleted, errors.Join(errs...)
}

// delete deletes the version of u that was judged; it reports false when
// another collector was first or the object changed.
func (g *Collector) delete(ctx context.Context, u *unstructured.Unstructured) (bool, error) {
	uid, rv := u.GetUID(), u.GetResourceVersion()
	err := g.Alloc.client.Delete(ctx, u.GetName(), metav1.DeleteOptions{
		Preconditions: &metav1.Preconditions{UID: &uid, ResourceVersion: &rv},
	})
	switch {
	case err == nil:
		return true, nil
	case apierrors.IsNotFound(err) || apierrors.IsConflict(err):
		return false, nil
	default:
		return false, fmt.Errorf("deleting SecurityIdentity %s: %w", u.GetName(), err)
	}
}

// Loop runs the collector every interval until ctx ends, logging errors.
func (g *Collector) Loop(ctx context.Context, interval time.Duration) {
	tk := time.NewTicker(interval)
	defer tk.Stop()
	for {
		if _, err := g.Run(ctx); err != nil && ctx.Err() == nil {
			g.Alloc.log.Warn("identity garbage collection", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-tk.C:
		}
	}
}
