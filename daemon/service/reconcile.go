package service

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/anet-dev/anet/daemon/service/lb"
)

// Default ID ranges: the maps' default sizes (anetd's --lb-services-max
// and --lb-backends-max).
const (
	DefaultMaxFrontends = 327680
	DefaultMaxBackends  = 262144
)

// Counters are the reconciler's counts, for the metrics to export.
type Counters struct {
	Puts        atomic.Uint64 // frontends written
	Deletes     atomic.Uint64 // frontends removed
	WriteErrors atomic.Uint64 // failed Put or Delete calls (a full map, ...), each retried
	Problems    atomic.Uint64 // reports of a Service (or part of one) that cannot be served

	// What the reconciler holds, after its last change.
	Services  atomic.Int64 // Services it has seen (with frontends or not)
	Frontends atomic.Int64 // frontends the maps hold
	Backends  atomic.Int64 // backend IDs the maps' frontends name
}

// HealthReporter learns when changes are queued and when the maps have
// caught up with them (kube-proxy's healthz semantics).
type HealthReporter interface {
	QueuedUpdate()
	Updated()
}

// HealthChecks serves the healthCheckNodePorts: SetHealthCheck is called
// whenever a Service's port or its count of local ready endpoints changes;
// port 0 means the Service has none (any more).
type HealthChecks interface {
	SetHealthCheck(namespace, name string, port uint16, localReady int)
}

// Options tune a Reconciler; zero values take the defaults.
type Options struct {
	// MaxFrontends bounds RevNat indexes (1..MaxFrontends), MaxBackends
	// backend IDs (1..MaxBackends): the maps' sizes.
	MaxFrontends uint32
	MaxBackends  uint32
	Health       HealthReporter
	HealthChecks HealthChecks
	// RetryMin and RetryMax bound the backoff of failed writes (1 s, 30 s).
	RetryMin, RetryMax time.Duration
	// Terminator, when set, is told of every UDP backend that leaves a
	// frontend (see goneBackends), once the maps no longer send new
	// connections to it, to destroy the sockets still connected to it.
	Terminator lb.SocketTerminator
	// Latency, when set, is told for each recomputed Service how long
	// ago its first change event since the last recomputation came: the
	// time from an API change to the maps.
	Latency func(time.Duration)
}

// backendKey is what a backend ID stands for: one address, port and
// protocol. The frontends that balance to it (a Service's ClusterIP and
// NodePorts, two Services selecting one pod) share its ID.
type backendKey struct {
	addr  netip.AddrPort
	proto Proto
}

func bkey(b MapBackend, p Proto) backendKey { return backendKey{b.Addr, p} }

type wanted struct {
	owner string // namespace/name of the Service
	f     Frontend
}

type svcEntry struct {
	keys     []FrontendKey // the frontends it owns, sorted
	problems string        // what was last logged
	skip     string
	hc       uint16
	local    int
	notified bool
}

// Reconciler keeps the service maps in line with the Services: it holds
// every Service's desired frontends, and on a change of one Service (or of
// one of its EndpointSlices) recomputes that Service alone and writes only
// the frontends whose map entry changes. It assigns each frontend a RevNat
// index for its life and each backend an ID that stays while a frontend
// keeps it; at start it adopts what the maps hold (Adopt), so that a
// restart keeps every ID and rewrites nothing that is right, and it prunes
// what no Service wants only once the informers have listed (Prune).
// A failed write is logged with the Service's name, counted and retried.
type Reconciler struct {
	m    Map
	log  *slog.Logger
	opts Options
	// Counters are safe to read at any time.
	Counters Counters

	mu       sync.Mutex
	node     Node
	adopted  bool
	pruned   bool
	svcs     map[string]*svcEntry
	want     map[FrontendKey]*wanted
	prog     map[FrontendKey]MapFrontend // what the maps hold
	progBy   map[FrontendKey]string      // the Service that wrote it ("" adopted)
	dirty    map[FrontendKey]bool        // want and prog may differ
	errs     map[FrontendKey]error       // last failed write
	waiters  map[FrontendKey]map[string]bool
	revnat   map[FrontendKey]uint32
	revnats  *idAlloc
	ids      *idAlloc
	idOf     map[backendKey]uint32
	keyOf    map[uint32]backendKey
	refs     map[uint32]int // programmed frontends naming each backend ID
	hcNotify []hcNote

	qmu    sync.Mutex
	queue  []string
	queued map[string]time.Time // when each queued key was first queued
	kick   chan struct{}

	inSync chan struct{} // closed by Run after the first prune
}

type hcNote struct {
	ns, name string
	port     uint16
	local    int
}

// NewReconciler returns a reconciler writing to m for node. Nothing is
// read or written before Adopt.
func NewReconciler(m Map, node Node, opts Options, log *slog.Logger) *Reconciler {
	if opts.MaxFrontends == 0 {
		opts.MaxFrontends = DefaultMaxFrontends
	}
	if opts.MaxBackends == 0 {
		opts.MaxBackends = DefaultMaxBackends
	}
	if opts.RetryMin <= 0 {
		opts.RetryMin = time.Second
	}
	if opts.RetryMax < opts.RetryMin {
		opts.RetryMax = max(30*time.Second, opts.RetryMin)
	}
	return &Reconciler{
		m: m, log: log, opts: opts, node: node,
		svcs: map[string]*svcEntry{}, want: map[FrontendKey]*wanted{},
		prog: map[FrontendKey]MapFrontend{}, progBy: map[FrontendKey]string{},
		dirty: map[FrontendKey]bool{}, errs: map[FrontendKey]error{},
		waiters: map[FrontendKey]map[string]bool{}, revnat: map[FrontendKey]uint32{},
		revnats: newIDAlloc("RevNat indexes", opts.MaxFrontends),
		ids:     newIDAlloc("backend IDs", opts.MaxBackends),
		idOf:    map[backendKey]uint32{}, keyOf: map[uint32]backendKey{}, refs: map[uint32]int{},
		queued: map[string]time.Time{}, kick: make(chan struct{}, 1), inSync: make(chan struct{}),
	}
}

// Adopt takes what the maps hold as programmed: their RevNat indexes and
// backend IDs stay taken, and a frontend that is still right is not
// written again. A RevNat or ID that is out of range or taken twice is not
// adopted; its frontend is rewritten with a new one when a Service wants
// it. Adopt must come before any Update; it may be retried on error.
func (r *Reconciler) Adopt() error {
	fs, err := r.m.Dump()
	if err != nil {
		return fmt.Errorf("reading the service maps: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.adopted {
		return errors.New("already adopted")
	}
	var rns, bids []uint32
	takenRN := map[uint32]bool{}
	for _, f := range fs {
		if _, dup := r.prog[f.Key]; dup {
			continue
		}
		f.Backends = slices.Clone(f.Backends)
		r.prog[f.Key] = f
		if r.revnats.valid(f.RevNat) && !takenRN[f.RevNat] {
			takenRN[f.RevNat] = true
			r.revnat[f.Key] = f.RevNat
			rns = append(rns, f.RevNat)
		}
		for _, b := range f.Backends {
			if !r.ids.valid(b.ID) {
				continue
			}
			bk := bkey(b, f.Key.Proto)
			if r.refs[b.ID] == 0 {
				r.keyOf[b.ID] = bk
				bids = append(bids, b.ID)
			}
			r.refs[b.ID]++
			if _, ok := r.idOf[bk]; !ok && r.keyOf[b.ID] == bk {
				r.idOf[bk] = b.ID
			}
		}
	}
	r.revnats.adopt(rns)
	r.ids.adopt(bids)
	r.adopted = true
	r.count()
	r.log.Info("service maps adopted", "frontends", len(fs), "backendIDs", len(bids))
	return nil
}

// SetNode changes the node's view (its addresses, for NodePorts) and
// recomputes every Service when it differs.
func (r *Reconciler) SetNode(n Node) {
	r.mu.Lock()
	same := n.Name == r.node.Name && slices.Equal(n.Addrs, r.node.Addrs)
	r.node = n
	var keys []string
	if !same {
		for k := range r.svcs {
			keys = append(keys, k)
		}
	}
	r.mu.Unlock()
	if !same {
		r.log.Info("node addresses changed; recomputing every Service", "node", n.Name, "addrs", n.Addrs)
		for _, k := range keys {
			r.Enqueue(k)
		}
	}
}

// Update recomputes the Service key (namespace/name) from svc and its
// EndpointSlices (svc nil: the Service is gone) and writes what changed.
// It reports whether every write succeeded; those that failed are kept
// and retried by Retry.
func (r *Reconciler) Update(key string, svc *corev1.Service, eps []*discoveryv1.EndpointSlice) bool {
	r.mu.Lock()
	ok := r.update(key, svc, eps)
	notes := r.hcNotify
	r.hcNotify = nil
	r.count()
	r.mu.Unlock()
	r.notify(notes)
	return ok
}

func (r *Reconciler) update(key string, svc *corev1.Service, eps []*discoveryv1.EndpointSlice) bool {
	var d Desired
	var problems []error
	if svc != nil {
		d, problems = Build(svc, eps, r.node)
	}
	e := r.svcs[key]
	if e == nil {
		if svc == nil {
			return true // never seen, gone: nothing to do
		}
		e = &svcEntry{}
		r.svcs[key] = e
	}
	newKeys := make([]FrontendKey, 0, len(d.Frontends))
	for i := range d.Frontends {
		f := &d.Frontends[i]
		w := r.want[f.Key]
		if w != nil && w.owner != key {
			problems = append(problems, fmt.Errorf("service %s: %s %s/%s is service %s's already; skipped", key, f.Kind, f.Key.Addr, f.Key.Proto, w.owner))
			ws := r.waiters[f.Key]
			if ws == nil {
				ws = map[string]bool{}
				r.waiters[f.Key] = ws
			}
			ws[key] = true
			continue
		}
		newKeys = append(newKeys, f.Key)
		if w == nil || !equalFrontend(w.f, *f) {
			r.want[f.Key] = &wanted{owner: key, f: *f}
			r.dirty[f.Key] = true
		}
	}
	slices.SortFunc(newKeys, compareKeys)
	var released []FrontendKey
	for _, k := range e.keys {
		if _, still := slices.BinarySearchFunc(newKeys, k, compareKeys); !still {
			delete(r.want, k)
			r.dirty[k] = true
			released = append(released, k)
			r.wake(k)
		}
	}
	e.keys = newKeys
	r.report(key, e, d.Skip, problems)
	hc, local := d.HealthCheck, d.LocalReady
	if hc == 0 {
		local = 0
	}
	if e.hc != hc || e.local != local || !e.notified && hc != 0 {
		if ns, name, ok := strings.Cut(key, "/"); ok {
			r.hcNotify = append(r.hcNotify, hcNote{ns: ns, name: name, port: hc, local: local})
		}
		e.hc, e.local, e.notified = hc, local, true
	}
	if svc == nil && len(e.keys) == 0 {
		delete(r.svcs, key)
	}
	ok := true
	for _, k := range newKeys {
		if r.dirty[k] && !r.sync(k) {
			ok = false
		}
	}
	for _, k := range released {
		if r.dirty[k] && !r.sync(k) {
			ok = false
		}
	}
	return ok
}

// report logs a Service's problems when they differ from what was logged
// last for it.
func (r *Reconciler) report(key string, e *svcEntry, skip string, problems []error) {
	if skip != e.skip {
		if skip != "" {
			r.log.Debug("service not proxied", "service", key, "reason", skip)
		}
		e.skip = skip
	}
	var b strings.Builder
	for _, p := range problems {
		b.WriteString(p.Error())
		b.WriteByte('\n')
	}
	if s := b.String(); s != e.problems {
		for _, p := range problems {
			r.log.Warn("cannot serve part of a service", "service", key, "err", p)
		}
		r.Counters.Problems.Add(uint64(len(problems)))
		e.problems = s
	}
}

// wake queues the Services that wanted a frontend another Service had.
func (r *Reconciler) wake(k FrontendKey) {
	for s := range r.waiters[k] {
		r.enqueue(s)
	}
	delete(r.waiters, k)
}

// sync writes one dirty frontend: Put what is wanted (when it differs from
// what the map holds), Delete what is not. It reports success; a failure
// leaves the key dirty.
func (r *Reconciler) sync(k FrontendKey) bool {
	err := r.write(k)
	owner := r.progBy[k]
	if w := r.want[k]; w != nil {
		owner = w.owner
	}
	if err != nil {
		r.Counters.WriteErrors.Add(1)
		if prev := r.errs[k]; prev == nil || prev.Error() != err.Error() {
			r.log.Error("writing a service frontend failed; retrying", "service", owner, "frontend", k.Addr, "proto", k.Proto, "scope", k.Scope, "err", err)
		}
		r.errs[k] = err
		return false
	}
	if r.errs[k] != nil {
		r.log.Info("service frontend written after earlier failures", "service", owner, "frontend", k.Addr, "proto", k.Proto)
		delete(r.errs, k)
	}
	delete(r.dirty, k)
	return true
}

func (r *Reconciler) write(k FrontendKey) error {
	w := r.want[k]
	prev, had := r.prog[k]
	if w == nil {
		if had {
			if err := r.m.Delete(k); err != nil {
				return fmt.Errorf("deleting: %w", err)
			}
			r.Counters.Deletes.Add(1)
			r.terminate(k, prev, MapFrontend{})
			for _, b := range prev.Backends {
				r.unref(b.ID)
			}
			delete(r.prog, k)
			delete(r.progBy, k)
		}
		if rn := r.revnat[k]; rn != 0 {
			r.revnats.put(rn)
			delete(r.revnat, k)
		}
		return nil
	}
	mf, fresh, err := r.mapFrontend(k, w.f, prev)
	if err == nil && had && equalMapFrontend(prev, mf) {
		r.progBy[k] = w.owner
		return nil
	}
	if err == nil {
		if err = r.m.Put(mf); err != nil {
			err = fmt.Errorf("writing: %w", err)
		}
	}
	if err != nil {
		for _, id := range fresh {
			if r.refs[id] == 0 {
				r.freeID(id)
			}
		}
		return err
	}
	r.Counters.Puts.Add(1)
	if had {
		r.terminate(k, prev, mf)
	}
	for _, b := range mf.Backends {
		r.refs[b.ID]++
	}
	for _, b := range prev.Backends {
		r.unref(b.ID)
	}
	r.prog[k] = mf
	r.progBy[k] = w.owner
	return nil
}

// mapFrontend is f as the maps hold it, with its RevNat and backend IDs:
// an ID the programmed frontend already gives a backend stays, else the
// backend's shared ID, else a new one (returned in fresh).
func (r *Reconciler) mapFrontend(k FrontendKey, f Frontend, prev MapFrontend) (MapFrontend, []uint32, error) {
	rn := r.revnat[k]
	if rn == 0 {
		var err error
		if rn, err = r.revnats.get(); err != nil {
			return MapFrontend{}, nil, err
		}
		r.revnat[k] = rn
	}
	order, active := Order(f)
	mf := MapFrontend{Key: k, RevNat: rn, Affinity: f.Affinity, Flags: FlagsOf(f), Active: active,
		Backends: make([]MapBackend, len(order))}
	var prevIDs map[backendKey]uint32
	if len(prev.Backends) > 0 {
		prevIDs = make(map[backendKey]uint32, len(prev.Backends))
		for _, b := range prev.Backends {
			prevIDs[bkey(b, k.Proto)] = b.ID
		}
	}
	var fresh []uint32
	for i, b := range order {
		mb := MapBackend{Addr: b.Addr, State: mapState(b.State)}
		bk := bkey(mb, k.Proto)
		if id, ok := prevIDs[bk]; ok && r.keyOf[id] == bk {
			mb.ID = id
		} else if id, ok := r.idOf[bk]; ok {
			mb.ID = id
		} else {
			id, err := r.ids.get()
			if err != nil {
				return MapFrontend{}, fresh, err
			}
			r.idOf[bk], r.keyOf[id] = id, bk
			fresh = append(fresh, id)
			mb.ID = id
		}
		mf.Backends[i] = mb
	}
	return mf, fresh, nil
}

// terminate tells the Terminator of the UDP backends that frontend k gave
// up when the maps went from prev to next (see goneBackends).
func (r *Reconciler) terminate(k FrontendKey, prev, next MapFrontend) {
	if r.opts.Terminator == nil || k.Proto != UDP {
		return
	}
	if gone := goneBackends(prev, next); len(gone) > 0 {
		r.opts.Terminator.TerminateUDP(gone)
	}
}

// goneBackends lists the backends that were in prev and are no longer
// there in next, or are there but Terminating (neither ready nor serving:
// kube-proxy flushes the UDP conntrack entries of such endpoints too). A
// backend that was Terminating in prev already went. next is the zero
// MapFrontend when the frontend itself went. The frontend's reverse-NAT
// index is prev's: the one the socket hooks recorded.
func goneBackends(prev, next MapFrontend) []lb.GoneBackend {
	live := make(map[netip.AddrPort]bool, len(next.Backends))
	for _, b := range next.Backends {
		if b.State != Terminating {
			live[b.Addr] = true
		}
	}
	var gone []lb.GoneBackend
	for _, b := range prev.Backends {
		if b.State != Terminating && !live[b.Addr] {
			gone = append(gone, lb.GoneBackend{RevNat: prev.RevNat, Addr: b.Addr})
		}
	}
	return gone
}

func (r *Reconciler) unref(id uint32) {
	if _, ok := r.refs[id]; !ok {
		return // not ours (out of range when adopted)
	}
	if r.refs[id]--; r.refs[id] <= 0 {
		r.freeID(id)
	}
}

func (r *Reconciler) freeID(id uint32) {
	delete(r.refs, id)
	if bk, ok := r.keyOf[id]; ok {
		if r.idOf[bk] == id {
			delete(r.idOf, bk)
		}
		delete(r.keyOf, id)
		r.ids.put(id)
	}
}

// Retry writes every frontend whose write failed, and reports whether
// none is left.
func (r *Reconciler) Retry() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	defer r.count()
	return r.retry()
}

// count publishes what the reconciler holds in Counters. Called with mu
// held, after every change.
func (r *Reconciler) count() {
	r.Counters.Services.Store(int64(len(r.svcs)))
	r.Counters.Frontends.Store(int64(len(r.prog)))
	r.Counters.Backends.Store(int64(len(r.refs)))
}

func (r *Reconciler) retry() bool {
	keys := make([]FrontendKey, 0, len(r.dirty))
	for k := range r.dirty {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, compareKeys)
	ok := true
	for _, k := range keys {
		if !r.sync(k) {
			ok = false
		}
	}
	return ok
}

// Prune removes what the maps hold that no Service wants: call it once
// every Service has been updated after the informers listed (before, a
// Service not seen yet would lose its frontends). From then on, frontends
// that a Service gives up are removed at once anyway.
func (r *Reconciler) Prune() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	defer r.count()
	if !r.pruned {
		n := 0
		for k := range r.prog {
			if r.want[k] == nil {
				r.dirty[k] = true
				n++
			}
		}
		r.pruned = true
		r.log.Info("pruning service frontends that no Service wants", "frontends", n)
	}
	return r.retry()
}

// Pending reports how many frontends wait for a write that failed.
func (r *Reconciler) Pending() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.dirty)
}

func (r *Reconciler) notify(notes []hcNote) {
	if r.opts.HealthChecks == nil {
		return
	}
	for _, n := range notes {
		r.opts.HealthChecks.SetHealthCheck(n.ns, n.name, n.port, n.local)
	}
}

func equalFrontend(a, b Frontend) bool {
	return a.Key == b.Key && a.Kind == b.Kind && a.Namespace == b.Namespace && a.Name == b.Name &&
		a.PortName == b.PortName && a.Affinity == b.Affinity && a.ExtLocal == b.ExtLocal &&
		a.IntLocal == b.IntLocal && a.HealthCheck == b.HealthCheck && slices.Equal(a.Backends, b.Backends)
}

func equalMapFrontend(a, b MapFrontend) bool {
	return a.Key == b.Key && a.RevNat == b.RevNat && a.Affinity == b.Affinity && a.Flags == b.Flags &&
		a.Active == b.Active && slices.Equal(a.Backends, b.Backends)
}
