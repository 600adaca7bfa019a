package k8s

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/client-go/tools/cache"
)

// sliceServiceIndex indexes EndpointSlices by the namespace/name of the
// Service they belong to (their kubernetes.io/service-name label).
const sliceServiceIndex = "service"

func sliceServiceKeys(obj any) ([]string, error) {
	s, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return nil, nil
	}
	if k := sliceService(s); k != "" {
		return []string{k}, nil
	}
	return nil, nil
}

// sliceService is the key of the Service a slice belongs to, "" for none.
func sliceService(s *discoveryv1.EndpointSlice) string {
	name := s.Labels[discoveryv1.LabelServiceName]
	if name == "" {
		return ""
	}
	return s.Namespace + "/" + name
}

// Service returns a Service from the informer's cache (a NotFound error
// when there is none).
func (c *Client) Service(namespace, name string) (*corev1.Service, error) {
	return c.factory.Core().V1().Services().Lister().Services(namespace).Get(name)
}

// EndpointSlices returns the EndpointSlices of a Service from the
// informer's cache: those labelled kubernetes.io/service-name=<service> in
// its namespace, any number, in no particular order.
func (c *Client) EndpointSlices(namespace, service string) ([]*discoveryv1.EndpointSlice, error) {
	objs, err := c.slices.GetIndexer().ByIndex(sliceServiceIndex, namespace+"/"+service)
	if err != nil {
		return nil, fmt.Errorf("endpointslices of %s/%s: %w", namespace, service, err)
	}
	out := make([]*discoveryv1.EndpointSlice, 0, len(objs))
	for _, o := range objs {
		if s, ok := o.(*discoveryv1.EndpointSlice); ok {
			out = append(out, s)
		}
	}
	return out, nil
}

// OnServiceChange calls f with the namespace/name of a Service whenever
// the Service or one of its EndpointSlices is added, changed or deleted
// (and for every one in the cache when registered). The informer's
// goroutine calls f: it must not block. synced reports when f has seen
// every object the informers listed; stop unregisters f.
func (c *Client) OnServiceChange(f func(key string)) (synced func() bool, stop func(), err error) {
	svcKey := func(obj any) {
		if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = t.Obj
		}
		if s, ok := obj.(*corev1.Service); ok {
			f(s.Namespace + "/" + s.Name)
		}
	}
	sliceKey := func(obj any) string {
		if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = t.Obj
		}
		if s, ok := obj.(*discoveryv1.EndpointSlice); ok {
			return sliceService(s)
		}
		return ""
	}
	onSlice := func(objs ...any) {
		seen := ""
		for _, o := range objs {
			if k := sliceKey(o); k != "" && k != seen {
				f(k)
				seen = k
			}
		}
	}
	sreg, err := c.services.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    svcKey,
		UpdateFunc: func(_, o any) { svcKey(o) },
		DeleteFunc: svcKey,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("watching services: %w", err)
	}
	ereg, err := c.slices.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(o any) { onSlice(o) },
		// A slice relabelled to another Service changes both.
		UpdateFunc: func(old, o any) { onSlice(old, o) },
		DeleteFunc: func(o any) { onSlice(o) },
	})
	if err != nil {
		_ = c.services.RemoveEventHandler(sreg)
		return nil, nil, fmt.Errorf("watching endpointslices: %w", err)
	}
	synced = func() bool { return sreg.HasSynced() && ereg.HasSynced() }
	stop = func() {
		_ = c.services.RemoveEventHandler(sreg)
		_ = c.slices.RemoveEventHandler(ereg)
	}
	return synced, stop, nil
}

// Node returns this node's Node object from the informer's cache (a
// NotFound error while there is none).
func (c *Client) Node() (*corev1.Node, error) {
	return c.factory.Core().V1().Nodes().Lister().Get(c.node)
}

// OnNodeChange calls f with what anetd takes from its Node whenever this
// node's object is added or changed (and once when registered, if the
// cache has it). The informer's goroutine calls f: it must not block.
func (c *Client) OnNodeChange(f func(NodeInfo)) (stop func(), err error) {
	on := func(obj any) {
		if n, ok := obj.(*corev1.Node); ok && n.Name == c.node {
			if info, err := nodeInfo(n); err == nil {
				f(info)
			}
		}
	}
	reg, err := c.nodes.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    on,
		UpdateFunc: func(_, o any) { on(o) },
	})
	if err != nil {
		return nil, fmt.Errorf("watching nodes: %w", err)
	}
	return func() { _ = c.nodes.RemoveEventHandler(reg) }, nil
}
