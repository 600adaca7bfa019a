package identity

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/resourceversion"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"
	"sigs.k8s.io/yaml"

	"github.com/anet-dev/anet/installer/manifests/crds"
)

// The SecurityIdentity custom resource.
const (
	Group    = "anet.dev"
	Version  = "v1alpha1"
	Kind     = "SecurityIdentity"
	Resource = "securityidentities"
	// KeyHashLabel carries KeyHash(spec.key) on every SecurityIdentity, so
	// that a key's objects are found with a label selector.
	KeyHashLabel = "anet.dev/key-hash"
)

// GVR is the SecurityIdentity resource.
var GVR = schema.GroupVersionResource{Group: Group, Version: Version, Resource: Resource}

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// KeyHash is the value of KeyHashLabel for a key: the first 128 bits of
// its SHA-256 in hex (a label value holds at most 63 characters). Objects
// found through it are always compared by their full key as well.
func KeyHash(key Key) string {
	s := sha256.Sum256([]byte(key))
	return hex.EncodeToString(s[:16])
}

// ApplyCRD applies the embedded SecurityIdentity CRD (server-side apply,
// field manager "anetd") and waits until the API server serves it.
func ApplyCRD(ctx context.Context, client dynamic.Interface) error {
	js, err := yaml.YAMLToJSON(crds.SecurityIdentity)
	if err != nil {
		return fmt.Errorf("decoding the SecurityIdentity CRD: %w", err)
	}
	force := true
	name := Resource + "." + Group
	if _, err := client.Resource(crdGVR).Patch(ctx, name, types.ApplyPatchType, js,
		metav1.PatchOptions{FieldManager: "anetd", Force: &force}); err != nil {
		return fmt.Errorf("applying CRD %s: %w", name, err)
	}
	for {
		u, err := client.Resource(crdGVR).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("reading CRD %s: %w", name, err)
		}
		conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
		for _, c := range conds {
			m, _ := c.(map[string]any)
			if m["type"] == "Established" && m["status"] == "True" {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for CRD %s to be established: %w", name, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// object is a valid SecurityIdentity as the allocator reads it.
type object struct {
	id  uint32
	key Key
	uid types.UID
	rv  string // the creation's resource version: objects are never updated
}

// parseObject validates a SecurityIdentity. It returns the number (when
// the name is one, even if the rest is bad: the number is taken) and the
// reason the object is unusable, or "" if it is valid.
func parseObject(u *unstructured.Unstructured) (o object, numbered bool, reason string) {
	name := u.GetName()
	id, err := strconv.ParseUint(name, 10, 32)
	if err != nil || strconv.FormatUint(id, 10) != name {
		return o, false, "name is not a decimal identity number"
	}
	o.id, o.uid, o.rv = uint32(id), u.GetUID(), u.GetResourceVersion()
	if !IsPod(o.id) {
		return o, false, fmt.Sprintf("number %d is outside the pod identity range %d..%d", id, MinPod, MaxPod)
	}
	k, found, err := unstructured.NestedString(u.Object, "spec", "key")
	if err != nil || !found || k == "" {
		return o, true, "spec.key is missing"
	}
	o.key = Key(k)
	ns, pod := o.key.Labels()
	if KeyOf(ns[NamespaceNameLabel], ns, pod) != o.key {
		return o, true, "spec.key is not a canonical identity key"
	}
	if h := u.GetLabels()[KeyHashLabel]; h != KeyHash(o.key) {
		return o, true, fmt.Sprintf("label %s is %q, not the hash of spec.key", KeyHashLabel, h)
	}
	return o, true, ""
}

// earlier reports whether a was created before b (resource versions are
// comparable within a resource; objects are never updated, so an
// object's resource version is its creation's).
func earlier(a, b object) bool {
	c, err := resourceversion.CompareResourceVersion(a.rv, b.rv)
	if err != nil || c == 0 {
		return a.id < b.id
	}
	return c < 0
}

// canonical returns the number of the earliest created of objs holding
// key: the one every node settles on.
func canonical(objs []object, key Key) (uint32, bool) {
	var best *object
	for i := range objs {
		if objs[i].key == key && (best == nil || earlier(objs[i], *best)) {
			best = &objs[i]
		}
	}
	if best == nil {
		return 0, false
	}
	return best.id, true
}

// CRDConfig configures a CRD allocator.
type CRDConfig struct {
	Client dynamic.Interface
	Log    *slog.Logger // default slog.Default()
	// Min and Max bound the numbers this allocator creates (default
	// MinPod..MaxPod; tests narrow it to force collisions).
	Min, Max uint32
	// Timeout bounds each Allocate's API calls (default 30s).
	Timeout time.Duration
}

// CRD is the cluster-wide Allocator: every identity is a SecurityIdentity
// object; see the package documentation and NewCRD.
type CRD struct {
	cfg      CRDConfig
	log      *slog.Logger
	ctx      context.Context
	client   dynamic.ResourceInterface
	informer cache.SharedIndexInformer

	mu      sync.Mutex
	byKey   map[Key]*crdEntry
	pending map[Key]chan struct{} // keys being resolved through the API
	logged  map[string]string     // object name -> the resource version whose badness was logged
}

type crdEntry struct {
	id   uint32
	refs int
}

const keyIndex = "key"

// NewCRD starts a CRD allocator: an informer on SecurityIdentity objects
// that runs until ctx ends. It returns once the informer has synced. The
// CRD must be applied (ApplyCRD).
//
// Allocate(key) takes a local reference. On the first, it looks the key
// up in the informer's cache, then in the API (a consistent list by
// KeyHashLabel); if no object holds the key, it creates one under a random
// free number, retrying with another on AlreadyExists. After a create it
// lists the key's objects again: if two nodes created objects for the same
// key at once, every node settles on the earliest created (the lowest
// resource version: the later creator's list always sees the earlier
// object), and the loser deletes its own object. Any later lookup finds
// only the winner, or the winner and a loser about to go, and picks the
// winner too.
//
// Release drops a local reference; the object stays until Collector
// removes it. If a SecurityIdentity this allocator holds references to is
// deleted (by a collector that raced a new pod, or by hand), the allocator
// creates it again with the same number and key.
//
// Objects that are not valid identities (a name that is not a number in
// the pod range, no key, a key that is not canonical, a wrong hash label)
// are logged once per version and otherwise ignored; a number held by
// such an object is not reused.
func NewCRD(ctx context.Context, cfg CRDConfig) (*CRD, error) {
	if cfg.Client == nil {
		return nil, errors.New("identity: CRDConfig.Client is required")
	}
	if cfg.Min == 0 && cfg.Max == 0 {
		cfg.Min, cfg.Max = MinPod, MaxPod
	}
	if !IsPod(cfg.Min) || !IsPod(cfg.Max) || cfg.Min > cfg.Max {
		return nil, fmt.Errorf("identity: range %d..%d is not inside %d..%d", cfg.Min, cfg.Max, MinPod, MaxPod)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 30 * time.Second
	}
	c := &CRD{
		cfg: cfg, log: cfg.Log, ctx: ctx, client: cfg.Client.Resource(GVR),
		byKey: map[Key]*crdEntry{}, pending: map[Key]chan struct{}{}, logged: map[string]string{},
	}
	if c.log == nil {
		c.log = slog.Default()
	}
	c.informer = dynamicinformer.NewFilteredDynamicInformer(cfg.Client, GVR, "", 0,
		cache.Indexers{keyIndex: func(obj any) ([]string, error) {
			u, ok := obj.(*unstructured.Unstructured)
			if !ok {
				return nil, nil
			}
			if o, _, reason := parseObject(u); reason == "" {
				return []string{string(o.key)}, nil
			}
			return nil, nil
		}}, nil).Informer()
	if _, err := c.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { c.check(obj) },
		UpdateFunc: func(_, obj any) { c.check(obj) },
		DeleteFunc: c.deleted,
	}); err != nil {
		return nil, err
	}
	go c.informer.Run(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), c.informer.HasSynced) {
		return nil, fmt.Errorf("identity: syncing the SecurityIdentity informer: %w", context.Cause(ctx))
	}
	return c, nil
}

// check logs an invalid object, once per resource version.
func (c *CRD) check(obj any) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return
	}
	_, _, reason := parseObject(u)
	c.mu.Lock()
	defer c.mu.Unlock()
	if reason == "" {
		delete(c.logged, u.GetName())
		return
	}
	if c.logged[u.GetName()] == u.GetResourceVersion() {
		return
	}
	c.logged[u.GetName()] = u.GetResourceVersion()
	c.log.Warn("ignoring SecurityIdentity", "name", u.GetName(), "reason", reason)
}

// deleted re-creates an object this allocator still uses.
func (c *CRD) deleted(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return
	}
	c.mu.Lock()
	delete(c.logged, u.GetName())
	c.mu.Unlock()
	o, _, reason := parseObject(u)
	if reason != "" {
		return
	}
	c.mu.Lock()
	e := c.byKey[o.key]
	held := e != nil && e.id == o.id && e.refs > 0
	c.mu.Unlock()
	if !held {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(c.ctx, c.cfg.Timeout)
		defer cancel()
		_, err := c.client.Create(ctx, newObject(o.id, o.key), metav1.CreateOptions{FieldManager: "anetd"})
		switch {
		case err == nil:
			c.log.Info("re-created deleted SecurityIdentity still in use", "id", o.id, "key", o.key)
		case apierrors.IsAlreadyExists(err):
		default:
			c.log.Error("re-creating deleted SecurityIdentity still in use", "id", o.id, "key", o.key, "err", err)
		}
	}()
}

func newObject(id uint32, key Key) *unstructured.Unstructured {
	ns, pod := key.Labels()
	toAny := func(m map[string]string) map[string]any {
		r := make(map[string]any, len(m))
		for k, v := range m {
			r[k] = v
		}
		return r
	}
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": Group + "/" + Version,
		"kind":       Kind,
		"metadata": map[string]any{
			"name":   strconv.FormatUint(uint64(id), 10),
			"labels": map[string]any{KeyHashLabel: KeyHash(key)},
		},
		"spec": map[string]any{"key": string(key), "namespaceLabels": toAny(ns), "podLabels": toAny(pod)},
	}}
	return u
}

// cached returns the valid objects of the informer's cache holding key.
func (c *CRD) cached(key Key) []object {
	items, _ := c.informer.GetIndexer().ByIndex(keyIndex, string(key))
	var objs []object
	for _, it := range items {
		if u, ok := it.(*unstructured.Unstructured); ok {
			if o, _, reason := parseObject(u); reason == "" {
				objs = append(objs, o)
			}
		}
	}
	return objs
}

// listKey lists key's objects from the API (a consistent read).
func (c *CRD) listKey(ctx context.Context, key Key) ([]object, error) {
	l, err := c.client.List(ctx, metav1.ListOptions{LabelSelector: KeyHashLabel + "=" + KeyHash(key)})
	if err != nil {
		return nil, fmt.Errorf("listing SecurityIdentities of %q: %w", key, err)
	}
	var objs []object
	for i := range l.Items {
		if o, _, reason := parseObject(&l.Items[i]); reason == "" {
			objs = append(objs, o)
		}
	}
	return objs, nil
}

// taken reports whether the cache holds an object named id.
func (c *CRD) taken(id uint32) bool {
	_, exists, _ := c.informer.GetIndexer().GetByKey(strconv.FormatUint(uint64(id), 10))
	return exists
}

// pickFree returns a number that neither the cache nor tried holds.
func (c *CRD) pickFree(tried map[uint32]bool) (uint32, bool) {
	free := func(id uint32) bool { return !tried[id] && !c.taken(id) }
	for range 32 {
		if id := c.cfg.Min + rand.Uint32N(c.cfg.Max-c.cfg.Min+1); free(id) {
			return id, true
		}
	}
	n := c.cfg.Max - c.cfg.Min + 1
	start := rand.Uint32N(n)
	for i := range n {
		if id := c.cfg.Min + (start+i)%n; free(id) {
			return id, true
		}
	}
	return 0, false
}

// maxCreates bounds the creates of one Allocate (each lost to another
// node's object under the same number).
const maxCreates = 64

// resolve finds or creates key's number through the API.
func (c *CRD) resolve(key Key) (uint32, error) {
	if id, ok := canonical(c.cached(key), key); ok {
		return id, nil
	}
	ctx, cancel := context.WithTimeout(c.ctx, c.cfg.Timeout)
	defer cancel()
	tried := map[uint32]bool{}
	for range maxCreates {
		objs, err := c.listKey(ctx, key)
		if err != nil {
			return 0, err
		}
		if id, ok := canonical(objs, key); ok {
			return id, nil
		}
		id, ok := c.pickFree(tried)
		if !ok {
			return 0, ErrExhausted
		}
		tried[id] = true
		created, err := c.client.Create(ctx, newObject(id, key), metav1.CreateOptions{FieldManager: "anetd"})
		if apierrors.IsAlreadyExists(err) {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("creating SecurityIdentity %d for %q: %w", id, key, err)
		}
		if objs, err = c.listKey(ctx, key); err != nil {
			return 0, err
		}
		win, ok := canonical(objs, key)
		if !ok {
			// Ours was deleted between the create and the list (by hand);
			// go round again.
			continue
		}
		if win != id {
			uid := created.GetUID()
			err := c.client.Delete(ctx, created.GetName(), metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
			if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
				c.log.Warn("deleting a duplicate SecurityIdentity", "id", id, "key", key, "winner", win, "err", err)
			}
			c.log.Debug("lost an identity race", "key", key, "ours", id, "winner", win)
		}
		return win, nil
	}
	return 0, fmt.Errorf("allocating an identity for %q: %d numbers taken by other nodes in a row", key, maxCreates)
}

// Allocate implements Allocator.
func (c *CRD) Allocate(key Key) (uint32, error) {
	for {
		c.mu.Lock()
		if e, ok := c.byKey[key]; ok {
			e.refs++
			c.mu.Unlock()
			return e.id, nil
		}
		if wait, ok := c.pending[key]; ok {
			c.mu.Unlock()
			<-wait
			continue
		}
		done := make(chan struct{})
		c.pending[key] = done
		c.mu.Unlock()

		id, err := c.resolve(key)
		c.mu.Lock()
		delete(c.pending, key)
		close(done)
		if err == nil {
			c.byKey[key] = &crdEntry{id: id, refs: 1}
		}
		c.mu.Unlock()
		return id, err
	}
}

// Release implements Allocator. The object stays (for other nodes, and
// for this one's next pod with the same labels) until a Collector removes
// it.
func (c *CRD) Release(key Key) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.byKey[key]
	if !ok {
		return fmt.Errorf("releasing identity %q: not allocated", key)
	}
	if e.refs--; e.refs == 0 {
		delete(c.byKey, key)
	}
	return nil
}

// Lookup implements Allocator: the number this allocator holds for key,
// else the one the cluster has for it.
func (c *CRD) Lookup(key Key) (uint32, bool) {
	c.mu.Lock()
	e, ok := c.byKey[key]
	c.mu.Unlock()
	if ok {
		return e.id, true
	}
	return canonical(c.cached(key), key)
}

// Held reports whether this allocator holds references to key.
func (c *CRD) Held(key Key) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.byKey[key] != nil
}

// Identities returns every valid identity of the cluster as the cache
// has it: for each key, its canonical number.
func (c *CRD) Identities() map[uint32]Key {
	var objs []object
	for _, it := range c.informer.GetIndexer().List() {
		if u, ok := it.(*unstructured.Unstructured); ok {
			if o, _, reason := parseObject(u); reason == "" {
				objs = append(objs, o)
			}
		}
	}
	best := map[Key]object{}
	for _, o := range objs {
		if b, ok := best[o.key]; !ok || earlier(o, b) {
			best[o.key] = o
		}
	}
	r := make(map[uint32]Key, len(best))
	for k, o := range best {
		r[o.id] = k
	}
	return r
}

// KeyOfID returns the key of a number in the cluster.
func (c *CRD) KeyOfID(id uint32) (Key, bool) {
	it, exists, _ := c.informer.GetIndexer().GetByKey(strconv.FormatUint(uint64(id), 10))
	if !exists {
		return "", false
	}
	u, ok := it.(*unstructured.Unstructured)
	if !ok {
		return "", false
	}
	o, _, reason := parseObject(u)
	if reason != "" {
		return "", false
	}
	return o.key, true
}

var _ Allocator = (*CRD)(nil)
