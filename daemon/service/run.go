package service

import (
	"context"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
)

// Source is where the reconciler reads Services and their EndpointSlices
// (the informers' caches: k8s.Client). A Service that does not exist is a
// NotFound error or nil.
type Source interface {
	Service(namespace, name string) (*corev1.Service, error)
	EndpointSlices(namespace, service string) ([]*discoveryv1.EndpointSlice, error)
}

// Enqueue asks for the Service key (namespace/name) to be recomputed: the
// change events of a Service and of its EndpointSlices call it. Each key is
// queued once however often it changes before Run takes it.
func (r *Reconciler) Enqueue(key string) {
	r.enqueue(key)
	if h := r.opts.Health; h != nil {
		h.QueuedUpdate()
	}
}

func (r *Reconciler) enqueue(key string) {
	r.qmu.Lock()
	if _, ok := r.queued[key]; !ok {
		r.queued[key] = time.Now()
		r.queue = append(r.queue, key)
	}
	r.qmu.Unlock()
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// take empties the queue: its keys, and when each was first queued.
func (r *Reconciler) take() ([]string, map[string]time.Time) {
	r.qmu.Lock()
	defer r.qmu.Unlock()
	q, since := r.queue, r.queued
	r.queue, r.queued = nil, make(map[string]time.Time, len(since))
	return q, since
}

func (r *Reconciler) queueLen() int {
	r.qmu.Lock()
	defer r.qmu.Unlock()
	return len(r.queue)
}

// Run adopts what the maps hold (retrying while they cannot be read), then
// recomputes queued Services from src until ctx ends, retrying failed
// writes with a backoff. Once synced is closed (the informers have
// delivered every object, so every Service is queued) and the queue has
// drained, it prunes what no Service wants.
func (r *Reconciler) Run(ctx context.Context, src Source, synced <-chan struct{}) {
	wait := r.opts.RetryMin
	for {
		err := r.Adopt()
		if err == nil {
			break
		}
		r.log.Error("cannot adopt the service maps; retrying", "err", err, "in", wait)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(wait*2, r.opts.RetryMax)
	}
	backoff := r.opts.RetryMin
	var retry <-chan time.Time
	var failedKeys []string // Services whose lookup failed
	for {
		start := time.Now()
		keys, since := r.take()
		for _, key := range keys {
			if !r.process(src, key) {
				failedKeys = append(failedKeys, key)
			} else if r.opts.Latency != nil {
				r.opts.Latency(time.Since(since[key]))
			}
		}
		if len(keys) > 100 {
			r.log.Debug("services recomputed", "services", len(keys), "took", time.Since(start).Round(time.Millisecond))
		}
		if synced != nil && closed(synced) && r.queueLen() == 0 {
			r.Prune()
			synced = nil
			r.log.Info("service frontends in sync with the API", "services", r.services(), "pending", r.Pending())
			close(r.inSync)
		}
		pending := r.Pending() > 0 || len(failedKeys) > 0
		switch {
		case pending && retry == nil:
			retry = time.After(backoff)
			backoff = min(backoff*2, r.opts.RetryMax)
		case !pending:
			retry, backoff = nil, r.opts.RetryMin
			if h := r.opts.Health; h != nil && synced == nil && r.queueLen() == 0 {
				h.Updated()
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-r.kick:
		case <-synced:
		case <-retry:
			retry = nil
			for _, k := range failedKeys {
				r.enqueue(k)
			}
			failedKeys = nil
			r.Retry()
		}
	}
}

// InSync is closed once Run has served every Service the informers
// listed and pruned what none wants (writes that failed are still being
// retried then: see Pending).
func (r *Reconciler) InSync() <-chan struct{} { return r.inSync }

func closed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// process recomputes one Service from src; false when src failed (the key
// is retried later).
func (r *Reconciler) process(src Source, key string) bool {
	ns, name, found := strings.Cut(key, "/")
	if !found {
		r.log.Warn("bad service key", "key", key)
		return true
	}
	svc, err := src.Service(ns, name)
	if apierrors.IsNotFound(err) {
		svc, err = nil, nil
	}
	var eps []*discoveryv1.EndpointSlice
	if err == nil && svc != nil {
		eps, err = src.EndpointSlices(ns, name)
	}
	if err != nil {
		r.log.Warn("reading a service from the cache; retrying", "service", key, "err", err)
		return false
	}
	r.Update(key, svc, eps)
	return true
}

func (r *Reconciler) services() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.svcs)
}
