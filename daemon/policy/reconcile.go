package policy

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"

	"github.com/anet-dev/anet/daemon/identity"
)

// Datapath is what the reconciler writes: the datapath's policy maps
// (daemon/datapath, adapted in anetd's main).
type Datapath interface {
	// SetEndpointPolicy replaces an endpoint's policy, writing only the
	// difference to what its map holds (adds first, then deletes).
	SetEndpointPolicy(ifindex uint32, ingressEnforced, egressEnforced bool, ingress, egress []Rule) error
	DeleteEndpointPolicy(ifindex uint32) error
	SetIPCache(p netip.Prefix, id uint32) error
	DeleteIPCache(p netip.Prefix) error
	// IPCache reads the ipcache back (once, at the first sync: the map is
	// pinned and outlives anetd).
	IPCache() (map[netip.Prefix]uint32, error)
	// PolicyEndpoints lists the endpoints the maps hold policy for (once,
	// at the first sync: what is there of an endpoint that went while
	// anetd was down is deleted).
	PolicyEndpoints() ([]uint32, error)
}

// Source is the cluster as the informers have it (daemon/k8s's listers).
type Source interface {
	NetworkPolicies() ([]*networkingv1.NetworkPolicy, error)
	Namespaces() ([]*corev1.Namespace, error)
	Nodes() ([]*corev1.Node, error)
	AllPods() ([]*corev1.Pod, error)
}

// Config configures a Reconciler.
type Config struct {
	Node     string // this node's name
	Source   Source
	Datapath Datapath
	// Alloc gives identity numbers: the cluster-wide CRD allocator in
	// anetd. The reconciler holds one reference to the key of every live
	// pod of the cluster it sees, so that a number never depends on
	// which node allocated it first.
	Alloc identity.Allocator
	// Endpoints returns this node's endpoints: host-side ifindex by the
	// pod's namespace/name.
	Endpoints func() map[string]uint32
	// Report is called once for each new problem (anetd emits an Event
	// on the policy); the reconciler logs it too.
	Report func(Problem)
	// Gateway, when set, gives the address a node owns in each of its
	// pod CIDRs (ipam.Gateway: on its lo, the source of what the node
	// itself sends its pods when no other address is closer, kubelet's
	// probes among them). It is a node address as InternalIP is: Host
	// on this node, RemoteNode on the others.
	Gateway func(podCIDR netip.Prefix) netip.Addr
	Options Options
	Log     *slog.Logger
	// Resync is how often the reconciler runs without a change event, a
	// safety net only: every input has its event (the informers', the
	// endpoints' through Enqueue) and a failed run is retried after 1 s.
	// A run compiles every policy of the cluster (about 0.5 s of a CPU
	// with 10 000 policies), so it is not frequent; default 5 min.
	Resync time.Duration
	// Latency, when set, is told after each run that a change event
	// started how long ago the first event of that run came: the time
	// from an API change to the maps.
	Latency func(time.Duration)
}

// Reconciler keeps the datapath's policy maps in line with the cluster:
// on every change (coalesced) it compiles the policies for this node's
// endpoints and writes what differs from what it wrote last.
type Reconciler struct {
	cfg      Config
	log      *slog.Logger
	compiler *Compiler
	kick     chan struct{}
	// When the first Enqueue since the last run's start came (unix ns;
	// 0: none), for Config.Latency.
	pendingSince atomic.Int64

	held     map[identity.Key]uint32
	written  map[uint32]written // by ifindex
	seeded   bool               // written holds what the maps held at the start
	ipcache  map[netip.Prefix]uint32
	reported map[Problem]bool

	mu   sync.Mutex
	snap *snapshot // the last run, for Last and anetctl (snapshot.go)

	// For WaitEndpoint: runs started and finished (a run's number is
	// taken when it starts), the local pods whose policy the last
	// finished run wrote, and a channel closed when a run finishes.
	runMu    sync.Mutex
	started  uint64
	finished uint64
	covered  map[string]bool
	ran      chan struct{}
}

// SetAllocator sets the allocator when it is not known at NewReconciler
// (anetd starts the CRD allocator in the background). Call it before Run.
func (r *Reconciler) SetAllocator(a identity.Allocator) { r.cfg.Alloc = a }

type written struct {
	key string // pod namespace/name
	ep  EndpointPolicy
}

// NewReconciler returns a reconciler; Run starts it.
func NewReconciler(cfg Config) *Reconciler {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Resync == 0 {
		cfg.Resync = 5 * time.Minute
	}
	return &Reconciler{cfg: cfg, log: cfg.Log, compiler: NewCompiler(cfg.Options), kick: make(chan struct{}, 1),
		held: map[identity.Key]uint32{}, written: map[uint32]written{}, reported: map[Problem]bool{},
		ran: make(chan struct{})}
}

// WaitEndpoint returns once a run that started after the call has written
// the policy of the local pod namespace/name (its endpoint registered, the
// pod in the cache), so that a pod a policy isolates is isolated before
// its first packet: anetd's ADD waits for it before it answers the
// plugin. It returns at once when no NetworkPolicy is in the pod's
// namespace (nothing can select it; the pod is open, as written at the
// endpoint's creation), and ctx's error when ctx ends first.
func (r *Reconciler) WaitEndpoint(ctx context.Context, namespace, name string) error {
	pols, err := r.cfg.Source.NetworkPolicies()
	if err != nil {
		return err
	}
	if !slices.ContainsFunc(pols, func(p *networkingv1.NetworkPolicy) bool { return p != nil && p.Namespace == namespace }) {
		return nil
	}
	key := namespace + "/" + name
	r.runMu.Lock()
	after := r.started
	r.runMu.Unlock()
	r.Enqueue()
	for {
		r.runMu.Lock()
		done, ok := r.ran, r.finished > after && r.covered[key]
		r.runMu.Unlock()
		if ok {
			return nil
		}
		// Not yet: the next run (the pod's arrival in the cache or a
		// failed write's retry starts one).
		select {
		case <-done:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Enqueue asks for a run; it never blocks (runs coalesce).
func (r *Reconciler) Enqueue() {
	r.pendingSince.CompareAndSwap(0, time.Now().UnixNano())
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Run reconciles once listed is closed (never from a partial cache: a
// missing policy would open a pod), then on every Enqueue and every
// Resync, until ctx ends. What is written stays in force after.
func (r *Reconciler) Run(ctx context.Context, listed <-chan struct{}) {
	select {
	case <-listed:
	case <-ctx.Done():
		return
	}
	tick := time.NewTicker(r.cfg.Resync)
	defer tick.Stop()
	var retry <-chan time.Time
	first := true
	for {
		start := time.Now()
		since := r.pendingSince.Swap(0)
		ok := r.safeSync()
		if since != 0 && r.cfg.Latency != nil {
			r.cfg.Latency(time.Since(time.Unix(0, since)))
		}
		if first {
			r.log.Info("network policy in force", "took", time.Since(start).Round(time.Millisecond), "complete", ok)
			first = false
		}
		retry = nil
		if !ok {
			retry = time.After(time.Second)
		}
		select {
		case <-ctx.Done():
			return
		case <-r.kick:
			// Let a burst of events (a deployment rolling) land in one run.
			time.Sleep(20 * time.Millisecond)
			select {
			case <-r.kick:
			default:
			}
		case <-tick.C:
		case <-retry:
		}
	}
}

// safeSync is Sync that survives a panic (a policy the model mishandles
// must not take anetd and every other policy down).
func (r *Reconciler) safeSync() (ok bool) {
	defer func() {
		if p := recover(); p != nil {
			r.log.Error("policy reconcile panicked; retrying", "panic", fmt.Sprint(p))
			ok = false
		}
	}()
	return r.Sync()
}

// Sync makes one run and reports whether everything was written.
func (r *Reconciler) Sync() bool {
	r.runMu.Lock()
	r.started++
	run := r.started
	r.runMu.Unlock()
	covered := map[string]bool{}
	defer func() {
		r.runMu.Lock()
		r.finished, r.covered = run, covered
		close(r.ran)
		r.ran = make(chan struct{})
		r.runMu.Unlock()
	}()
	src := r.cfg.Source
	pols, err1 := src.NetworkPolicies()
	nss, err2 := src.Namespaces()
	nodes, err3 := src.Nodes()
	pods, err4 := src.AllPods()
	if err := firstErr(err1, err2, err3, err4); err != nil {
		r.log.Warn("listing for policy", "err", err)
		return false
	}
	ok := r.allocate(pods, nss)
	res := r.compiler.Compile(Input{
		Policies: pols, Pods: pods, Namespaces: nss, Nodes: NodesOf(nodes, r.cfg.Gateway), LocalNode: r.cfg.Node,
		Identity: func(k identity.Key) (uint32, bool) { id, ok := r.held[k]; return id, ok },
	})
	r.report(res.Problems)
	if !r.writeIPCache(res.IPCache, true) {
		ok = false
	}
	if !r.seed() {
		ok = false
	} else if !r.writeEndpoints(res.Endpoints, covered) {
		ok = false
	}
	if !r.writeIPCache(res.IPCache, false) {
		ok = false
	}
	if len(res.Unresolved) > 0 {
		r.log.Debug("pods without an identity yet", "count", len(res.Unresolved))
	}
	r.publish(res, pods, nss)
	return ok
}

// Last returns the result of the last run (for anetctl and tests).
func (r *Reconciler) Last() Result {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.snap == nil {
		return Result{}
	}
	return r.snap.res
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

// NodesOf takes the nodes' own addresses (InternalIP, ExternalIP, and
// with gateway the gateway of each pod CIDR).
func NodesOf(nodes []*corev1.Node, gateway func(netip.Prefix) netip.Addr) []Node {
	out := make([]Node, 0, len(nodes))
	for _, n := range nodes {
		if n == nil {
			continue
		}
		nd := Node{Name: n.Name}
		add := func(ip netip.Addr) {
			if ip = ip.Unmap(); ip.IsValid() && !slices.Contains(nd.Addrs, ip) {
				nd.Addrs = append(nd.Addrs, ip)
			}
		}
		for _, a := range n.Status.Addresses {
			if a.Type != corev1.NodeInternalIP && a.Type != corev1.NodeExternalIP {
				continue
			}
			if ip, err := netip.ParseAddr(a.Address); err == nil {
				add(ip)
			}
		}
		if gateway != nil {
			cidrs := n.Spec.PodCIDRs
			if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
				cidrs = []string{n.Spec.PodCIDR}
			}
			for _, c := range cidrs {
				if p, err := netip.ParsePrefix(c); err == nil {
					add(gateway(p.Masked()))
				}
			}
		}
		out = append(out, nd)
	}
	return out
}

// allocate holds a reference to the identity of every live pod's key and
// releases those no pod has any more.
func (r *Reconciler) allocate(pods []*corev1.Pod, nss []*corev1.Namespace) bool {
	nsl := map[string]map[string]string{}
	for _, ns := range nss {
		if ns != nil {
			nsl[ns.Name] = ns.Labels
		}
	}
	want := map[identity.Key]bool{}
	for _, p := range pods {
		if live(p) {
			want[identity.KeyOf(p.Namespace, nsl[p.Namespace], p.Labels)] = true
		}
	}
	ok := true
	for _, k := range slices.Sorted(maps.Keys(want)) {
		if _, have := r.held[k]; have {
			continue
		}
		id, err := r.cfg.Alloc.Allocate(k)
		if err != nil {
			r.log.Warn("allocating an identity; its pods are left out until it is", "key", k, "err", err)
			ok = false
			continue
		}
		r.held[k] = id
	}
	for k := range r.held {
		if !want[k] {
			if err := r.cfg.Alloc.Release(k); err != nil {
				r.log.Warn("releasing an identity", "key", k, "err", err)
			}
			delete(r.held, k)
		}
	}
	return ok
}

// report logs and reports the problems not seen in the last run.
func (r *Reconciler) report(problems []Problem) {
	now := make(map[Problem]bool, len(problems))
	for _, p := range problems {
		now[p] = true
		if r.reported[p] {
			continue
		}
		r.log.Warn("network policy not enforced as written", "policy", p.Policy, "field", p.Field, "why", p.Why)
		if r.cfg.Report != nil {
			r.cfg.Report(p)
		}
	}
	r.reported = now
}

// writeIPCache writes the entries that are new or changed (sets) or
// deletes those that went (!sets).
func (r *Reconciler) writeIPCache(want map[netip.Prefix]uint32, sets bool) bool {
	if r.ipcache == nil {
		have, err := r.cfg.Datapath.IPCache()
		if err != nil {
			r.log.Warn("reading the ipcache", "err", err)
			return false
		}
		r.ipcache = have
	}
	set, del := DiffIPCache(r.ipcache, want)
	ok := true
	if sets {
		for _, p := range Prefixes(set) {
			if err := r.cfg.Datapath.SetIPCache(p, set[p]); err != nil {
				r.log.Warn("writing the ipcache", "prefix", p, "identity", set[p], "err", err)
				ok = false
				continue
			}
			r.ipcache[p] = set[p]
		}
		return ok
	}
	for _, p := range del {
		if err := r.cfg.Datapath.DeleteIPCache(p); err != nil {
			r.log.Warn("deleting from the ipcache", "prefix", p, "err", err)
			ok = false
			continue
		}
		delete(r.ipcache, p)
	}
	return ok
}

// seed takes, at the first run, the endpoints the pinned maps hold policy
// for as written by no pod: writeEndpoints then rewrites those of this
// node's endpoints (only what differs from the maps) and deletes the rest,
// the state of endpoints that went while anetd was down.
func (r *Reconciler) seed() bool {
	if r.seeded {
		return true
	}
	ifindexes, err := r.cfg.Datapath.PolicyEndpoints()
	if err != nil {
		r.log.Warn("reading the endpoints the policy maps hold", "err", err)
		return false
	}
	for _, i := range ifindexes {
		if _, ok := r.written[i]; !ok {
			r.written[i] = written{}
		}
	}
	r.seeded = true
	return true
}

// writeEndpoints writes the policy of every local endpoint whose policy
// changed, and deletes that of endpoints that went. An endpoint whose pod
// the cache does not know (yet) is open, as before any policy. The
// endpoints whose pod it knows and whose policy the maps hold go into
// covered.
func (r *Reconciler) writeEndpoints(want map[string]EndpointPolicy, covered map[string]bool) bool {
	eps := r.cfg.Endpoints()
	ok := true
	seen := map[uint32]bool{}
	for _, key := range slices.Sorted(maps.Keys(eps)) {
		ifindex := eps[key]
		seen[ifindex] = true
		ep, known := want[key]
		if w, have := r.written[ifindex]; have && w.key == key && Diff(w.ep, ep).Empty(w.ep) {
			covered[key] = known
			continue
		}
		if err := r.cfg.Datapath.SetEndpointPolicy(ifindex, ep.IngressEnforced, ep.EgressEnforced, ep.Ingress, ep.Egress); err != nil {
			r.log.Warn("writing an endpoint's policy", "pod", key, "ifindex", ifindex, "err", err)
			delete(r.written, ifindex)
			ok = false
			continue
		}
		r.written[ifindex] = written{key: key, ep: ep}
		covered[key] = known
		r.log.Debug("endpoint policy written", "pod", key, "ifindex", ifindex,
			"ingressEnforced", ep.IngressEnforced, "egressEnforced", ep.EgressEnforced,
			"ingress", len(ep.Ingress), "egress", len(ep.Egress))
	}
	for ifindex, w := range r.written {
		if seen[ifindex] {
			continue
		}
		if err := r.cfg.Datapath.DeleteEndpointPolicy(ifindex); err != nil {
			r.log.Warn("deleting an endpoint's policy", "pod", w.key, "ifindex", ifindex, "err", err)
			ok = false
			continue
		}
		delete(r.written, ifindex)
	}
	return ok
}
