// Package endpoint keeps the node's endpoints: the record of each wired pod
// interface, persisted in the state directory, and their entries in the
// datapath. It reconciles the two on start: what the records say is
// written, what they do not say is pruned.
package endpoint

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/renameio/v2"

	"github.com/anet-dev/anet/daemon/api"
	"github.com/anet-dev/anet/daemon/datapath"
	"github.com/anet-dev/anet/daemon/ipam"
)

// Datapath is what the manager needs of the eBPF maps.
type Datapath interface {
	UpsertEndpoint(datapath.Endpoint) error
	DeleteEndpoint(ip netip.Addr, ifindex uint32) error
	DeleteEndpointEntries(ip netip.Addr, ifindex uint32) error
	MapEndpoints() (map[netip.Addr]uint32, map[uint32]netip.Addr, error)
	Counters() (map[uint32]map[datapath.CounterKey]datapath.Counter, error)
	DeleteCountersOf(ifindex uint32) error
}

// Devices is what the manager needs of the node's links.
type Devices interface {
	// Exists reports whether the host-side device of an endpoint is still
	// there under that name and index.
	Exists(name string, ifindex uint32) bool
	// Remove deletes a host-side device (with its pod-side peer) and its
	// link pins, and says whether there was a device to delete; what is
	// already gone is fine. Deleting a device waits for every program
	// still running on it or with what it read of the maps.
	Remove(name string) (removed bool, err error)
	// List names the host-side devices there are (datapath.HostIfName's
	// shape), whoever made them.
	List() ([]string, error)
}

// OrphanGrace is how old an allocation without an endpoint must be before
// the sweep releases it. anet-cni's ADD (Add) never leaves one: its address
// is held in memory until its record is written. Such allocations come
// from the two-step API (Allocate, then Register) of a caller that died in
// between; the grace leaves a running one time to finish.
const OrphanGrace = 10 * time.Minute

// Manager owns the endpoint records and their datapath entries.
type Manager struct {
	dir  string
	ipam *ipam.Allocator
	dp   Datapath
	devs Devices
	log  *slog.Logger

	ready *readyPool // nil: records are written the plain way (UseReadyFiles)

	onChange atomic.Pointer[func()] // SetOnChange
	podMTU   atomic.Int32           // SetPodMTU; 0: the kernel's default

	mu   sync.Mutex
	eps  map[api.Attachment]*api.Endpoint
	busy map[api.Attachment]chan struct{} // attachments with a verb in progress
}

// New returns a manager keeping its records in dir. Call Restore before use.
func New(dir string, alloc *ipam.Allocator, dp Datapath, devs Devices, log *slog.Logger) (*Manager, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	return &Manager{dir: dir, ipam: alloc, dp: dp, devs: devs, log: log, eps: map[api.Attachment]*api.Endpoint{}}, nil
}

// SetPodMTU sets the MTU of pod interfaces whose ADD names none (the
// conflist's mtu is 0 or absent); 0 leaves them at the kernel's default.
// Interfaces wired before keep theirs.
func (m *Manager) SetPodMTU(mtu int) { m.podMTU.Store(int32(mtu)) }

// PodMTU is what SetPodMTU set.
func (m *Manager) PodMTU() int { return int(m.podMTU.Load()) }

func (m *Manager) recordPath(a api.Attachment) string {
	return filepath.Join(m.dir, datapath.HostIfName(a.ContainerID, a.IfName)+".json")
}

func toDatapath(e *api.EndpointRequest) (datapath.Endpoint, error) {
	pod, err := net.ParseMAC(e.PodMAC)
	if err != nil {
		return datapath.Endpoint{}, err
	}
	host, err := net.ParseMAC(e.HostMAC)
	if err != nil {
		return datapath.Endpoint{}, err
	}
	return datapath.Endpoint{IP: e.IP, Ifindex: e.HostIfindex, PodMAC: pod, HostMAC: host}, nil
}

// Allocate gives an attachment an address. It holds the manager's lock so
// that no allocation appears while Restore, GC or the sweep of dead ADDs
// decide which allocations belong to nobody.
func (m *Manager) Allocate(r api.AllocateRequest) (*api.Allocation, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if r.Network != "" {
		if ip, ok := m.ipam.Lookup(r.Attachment.Legacy()); ok {
			return nil, fmt.Errorf("%w: %s/%s holds %s", api.ErrExists, r.ContainerID, r.IfName, ip)
		}
	}
	ip, err := m.ipam.Allocate(r.Attachment)
	if err != nil {
		return nil, err
	}
	m.log.Info("address allocated", "containerID", r.ContainerID, "ifName", r.IfName, "ip", ip, "pod", r.Pod.Namespace+"/"+r.Pod.Name)
	return &api.Allocation{IP: ip, Gateway: m.ipam.Gateway(), PodCIDR: m.ipam.CIDR()}, nil
}

// Register records a wired endpoint and programs the datapath. The address
// must be the one allocated to the attachment.
func (m *Manager) Register(r api.EndpointRequest) error {
	dpe, err := toDatapath(&r)
	if err != nil {
		return fmt.Errorf("%w: %v", api.ErrInvalid, err)
	}
	// The allocation is checked under the lock that Delete holds while it
	// releases: checked before it, a DEL in between would leave an
	// endpoint whose address is free.
	m.mu.Lock()
	defer m.mu.Unlock()
	if ip, ok := m.ipam.Lookup(r.Attachment); !ok || ip != r.IP {
		return fmt.Errorf("%w: %s is not allocated to %s/%s", api.ErrInvalid, r.IP, r.ContainerID, r.IfName)
	}
	if old, ok := m.eps[r.Attachment]; ok {
		if old.EndpointRequest == r {
			return nil // the same registration again
		}
		return fmt.Errorf("%w: endpoint %s/%s", api.ErrExists, r.ContainerID, r.IfName)
	}
	ep := &api.Endpoint{EndpointRequest: r, Created: time.Now().UTC().Round(0)}
	b, err := json.Marshal(ep)
	if err != nil {
		return err
	}
	if err := renameio.WriteFile(m.recordPath(r.Attachment), b, 0o600); err != nil {
		return fmt.Errorf("recording endpoint: %w", err)
	}
	if err := m.dp.UpsertEndpoint(dpe); err != nil {
		_ = os.Remove(m.recordPath(r.Attachment))
		return fmt.Errorf("programming datapath: %w", err)
	}
	m.eps[r.Attachment] = ep
	m.changed()
	m.log.Info("endpoint registered", "containerID", r.ContainerID, "ifName", r.IfName, "ip", r.IP, "hostIf", r.HostIfName, "mode", r.AttachMode)
	return nil
}

// Delete removes an endpoint's datapath entries, releases its address and
// removes its record, in that order, so that a crash in between leaves
// something Restore finishes. Deleting what does not exist succeeds.
func (m *Manager) Delete(a api.Attachment) error {
	m.mu.Lock()
	a = m.resolveLocked(a)
	m.mu.Unlock()
	// After any ADD of the attachment in progress. The map entries go
	// first, then the device, outside the manager's lock: a veth takes the
	// kernel tens of milliseconds to delete, which other attachments need
	// not wait for, and its deletion waits for every program still running
	// with what it read of the entries, so that the counters, removed last,
	// cannot come back.
	unlock := m.lockAttachment(a)
	defer unlock()
	m.mu.Lock()
	ep := m.eps[a]
	var err error
	if ep != nil {
		err = m.dp.DeleteEndpointEntries(ep.IP, ep.HostIfindex)
	}
	m.mu.Unlock()
	if err != nil {
		return fmt.Errorf("removing datapath entries: %w", err)
	}
	host := datapath.HostIfName(a.ContainerID, a.IfName)
	if ep != nil {
		host = ep.HostIfName
	}
	synced, err := m.devs.Remove(host)
	if err != nil {
		return fmt.Errorf("removing the endpoint's device: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.deleteWith(a, synced && ep != nil)
}

// resolveLocked returns the key under which a is known: a itself, or, for
// an attachment made before networks were recorded, a without its network
// (a DEL or CHECK after an upgrade names the network; the record does not).
func (m *Manager) resolveLocked(a api.Attachment) api.Attachment {
	if a.Network == "" {
		return a
	}
	if _, ok := m.eps[a]; ok {
		return a
	}
	if _, ok := m.ipam.Lookup(a); ok {
		return a
	}
	l := a.Legacy()
	if _, ok := m.eps[l]; ok {
		return l
	}
	if _, ok := m.ipam.Lookup(l); ok {
		return l
	}
	return a
}

func (m *Manager) deleteLocked(a api.Attachment) error { return m.deleteWith(a, false) }

// deleteWith is deleteLocked; synced says that no program can still be
// running with the endpoint's entries (its device was deleted after them),
// so that its counters go without waiting.
func (m *Manager) deleteWith(a api.Attachment, synced bool) error {
	ep := m.eps[a]
	if ep != nil {
		if !synced {
			// Collected, GC'd, released while anetd was away, or lost its
			// address: its device goes too (anetd owns it).
			if _, err := m.devs.Remove(ep.HostIfName); err != nil {
				return fmt.Errorf("removing the endpoint's device: %w", err)
			}
		}
		del := m.dp.DeleteEndpoint
		if synced {
			del = func(ip netip.Addr, ifindex uint32) error {
				return errors.Join(m.dp.DeleteEndpointEntries(ip, ifindex), m.dp.DeleteCountersOf(ifindex))
			}
		}
		if err := del(ep.IP, ep.HostIfindex); err != nil {
			return fmt.Errorf("removing datapath entries: %w", err)
		}
	}
	ip, released, err := m.ipam.Release(a)
	if err != nil {
		return err
	}
	if err := os.Remove(m.recordPath(a)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	delete(m.eps, a)
	if ep != nil {
		m.changed()
	}
	if ep != nil || released {
		m.log.Info("endpoint deleted", "containerID", a.ContainerID, "ifName", a.IfName, "ip", ip)
	}
	return nil
}

// Get returns an endpoint with its counters.
func (m *Manager) Get(a api.Attachment) (*api.Endpoint, error) {
	m.mu.Lock()
	a = m.resolveLocked(a)
	m.mu.Unlock()
	eps, err := m.List()
	if err != nil {
		return nil, err
	}
	for i := range eps {
		if eps[i].Attachment == a {
			return &eps[i], nil
		}
	}
	return nil, fmt.Errorf("%w: endpoint %s/%s", api.ErrNotFound, a.ContainerID, a.IfName)
}

// List returns every endpoint with its counters, sorted by address.
func (m *Manager) List() ([]api.Endpoint, error) {
	counters, err := m.dp.Counters()
	if err != nil {
		return nil, fmt.Errorf("reading counters: %w", err)
	}
	m.mu.Lock()
	out := make([]api.Endpoint, 0, len(m.eps))
	for _, ep := range m.eps {
		e := *ep
		e.Counters = apiCounters(counters[ep.HostIfindex])
		out = append(out, e)
	}
	m.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].IP.Less(out[j].IP) })
	return out, nil
}

func apiCounters(c map[datapath.CounterKey]datapath.Counter) []api.Counter {
	out := make([]api.Counter, 0, len(c))
	for k, v := range c {
		out = append(out, api.Counter{Dir: k.Dir.String(), Reason: k.Reason.String(), Packets: v.Packets, Bytes: v.Bytes})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Dir != out[j].Dir {
			return out[i].Dir < out[j].Dir
		}
		return out[i].Reason < out[j].Reason
	})
	return out
}

// Count returns how many endpoints are registered.
func (m *Manager) Count() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.eps)
}

// GC removes every endpoint and allocation of network whose attachment is
// not in valid, with their devices, and the link pins of devices that are
// gone. Those of other networks stay, and so do those without a
// network (made before networks were recorded: they may be another
// network's; DEL and the Kubernetes collector remove them). An empty
// network (an older plugin) means every record, as GC did before.
func (m *Manager) GC(network string, valid []api.Attachment) (*api.GCResult, error) {
	keep := map[api.Attachment]bool{}
	for _, a := range valid {
		a.Network = network
		keep[a] = true
	}
	collectable := func(a api.Attachment) bool {
		if _, busy := m.busy[a]; busy {
			return false // an ADD or DEL of it is running: it decides
		}
		if network == "" {
			return !keep[a.Legacy()]
		}
		return a.Network == network && !keep[a]
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	gone := map[api.Attachment]bool{}
	for a := range m.eps {
		if collectable(a) {
			gone[a] = true
		}
	}
	for a := range m.ipam.List() {
		if collectable(a) {
			gone[a] = true
		}
	}
	res := &api.GCResult{Removed: []api.Attachment{}}
	var errs []error
	for a := range gone {
		if m.eps[a] == nil {
			// An allocation without an endpoint: its device, should an
			// ADD have left one, goes too (deleteLocked removes an
			// endpoint's).
			if _, err := m.devs.Remove(datapath.HostIfName(a.ContainerID, a.IfName)); err != nil {
				errs = append(errs, err)
				continue
			}
		}
		if err := m.deleteLocked(a); err != nil {
			errs = append(errs, err)
			continue
		}
		res.Removed = append(res.Removed, a)
	}
	if p, ok := m.dp.(LinkPruner); ok {
		if err := p.PruneLinks(); err != nil {
			errs = append(errs, fmt.Errorf("pruning link pins: %w", err))
		}
	}
	sort.Slice(res.Removed, func(i, j int) bool { return res.Removed[i].ContainerID < res.Removed[j].ContainerID })
	return res, errors.Join(errs...)
}

// Pending names where anet-cni leaves work for anetd: the releases it
// could not tell anetd about (api.PendingReleaseDir).
type Pending struct {
	Releases string
}

// Restore loads the records, drops those whose device or address is gone,
// writes the rest into the datapath and prunes every map entry and counter
// that belongs to no record, and the devices that no record names (an ADD
// cut short by a crash). Then it applies pending releases and sweeps
// orphaned allocations (see ApplyPending).
func (m *Manager) Restore(p Pending) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	entries, err := os.ReadDir(m.dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		path := filepath.Join(m.dir, e.Name())
		if !strings.HasSuffix(e.Name(), ".json") {
			_ = os.Remove(path) // temp files of interrupted writes
			continue
		}
		var ep api.Endpoint
		b, err := os.ReadFile(path)
		if err == nil {
			err = json.Unmarshal(b, &ep)
		}
		if err == nil {
			err = ep.Validate()
		}
		if err != nil {
			m.log.Warn("dropping unreadable endpoint record", "file", path, "err", err)
			_ = os.Remove(path)
			continue
		}
		m.eps[ep.Attachment] = &ep
	}
	for a, ep := range m.eps {
		ip, allocated := m.ipam.Lookup(a)
		if !allocated {
			// A whole ADD by anetd keeps the address in the endpoint's
			// record alone (see Add): claim it back.
			if err := m.ipam.Hold(a, ep.IP); err == nil {
				ip, allocated = ep.IP, true
			} else {
				m.log.Warn("endpoint record's address cannot be held", "containerID", a.ContainerID, "ip", ep.IP, "err", err)
			}
		}
		switch {
		case !allocated || ip != ep.IP:
			m.log.Info("endpoint lost its address; removing", "containerID", a.ContainerID, "ip", ep.IP)
		case !m.devs.Exists(ep.HostIfName, ep.HostIfindex):
			m.log.Info("endpoint device is gone; removing", "containerID", a.ContainerID, "hostIf", ep.HostIfName)
		default:
			dpe, err := toDatapath(&ep.EndpointRequest)
			if err == nil {
				err = m.dp.UpsertEndpoint(dpe)
			}
			if err != nil {
				return fmt.Errorf("restoring endpoint %s: %w", ep.IP, err)
			}
			continue
		}
		if err := m.deleteLocked(a); err != nil {
			return err
		}
	}
	if err := m.removeOrphanDevicesLocked(); err != nil {
		return err
	}
	if err := m.pruneLocked(); err != nil {
		return err
	}
	return m.applyPendingLocked(p)
}

func (m *Manager) pruneLocked() error {
	wantIP := map[netip.Addr]uint32{}
	wantIf := map[uint32]bool{}
	for _, ep := range m.eps {
		wantIP[ep.IP] = ep.HostIfindex
		wantIf[ep.HostIfindex] = true
	}
	byIP, byIf, err := m.dp.MapEndpoints()
	if err != nil {
		return err
	}
	for ip, ifindex := range byIP {
		if want, ok := wantIP[ip]; !ok || want != ifindex {
			m.log.Info("pruning stale endpoint entry", "ip", ip, "ifindex", ifindex)
			if err := m.dp.DeleteEndpoint(ip, 0); err != nil {
				return err
			}
		}
	}
	for ifindex, ip := range byIf {
		if !wantIf[ifindex] || wantIP[ip] != ifindex {
			m.log.Info("pruning stale device entry", "ifindex", ifindex, "ip", ip)
			if err := m.dp.DeleteEndpoint(netip.Addr{}, ifindex); err != nil {
				return err
			}
		}
	}
	counters, err := m.dp.Counters()
	if err != nil {
		return err
	}
	for ifindex := range counters {
		if !wantIf[ifindex] {
			if err := m.dp.DeleteCountersOf(ifindex); err != nil {
				return err
			}
		}
	}
	return nil
}

// ApplyPending applies the releases anet-cni recorded while anetd was away,
// then releases every allocation older than OrphanGrace that has no
// endpoint (with its device, should there be one).
func (m *Manager) ApplyPending(p Pending) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.applyPendingLocked(p)
}

func (m *Manager) applyPendingLocked(p Pending) error {
	if err := m.releasePendingLocked(p.Releases); err != nil {
		return err
	}
	return m.sweepLocked()
}

func (m *Manager) sweepLocked() error {
	var errs []error
	for a, ip := range m.ipam.List() {
		if _, ok := m.eps[a]; ok {
			continue
		}
		if _, busy := m.busy[a]; busy {
			continue // an ADD of it is running
		}
		at, ok := m.ipam.AllocatedAt(a)
		if !ok || time.Since(at) < OrphanGrace {
			continue
		}
		m.log.Info("releasing an allocation that has no endpoint", "containerID", a.ContainerID, "ifName", a.IfName, "ip", ip, "allocated", at)
		if _, err := m.devs.Remove(datapath.HostIfName(a.ContainerID, a.IfName)); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := m.deleteLocked(a); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (m *Manager) releasePendingLocked(dir string) error {
	recs, err := api.ReadPendingReleases(dir)
	if err != nil {
		return err
	}
	for path, rec := range recs {
		a := rec.Attachment
		if _, busy := m.busy[m.resolveLocked(a)]; busy {
			continue // an ADD or DEL of it is running; the next tick applies it
		}
		// An endpoint made after the DEL was recorded is a later ADD's,
		// not the one the DEL was for.
		if ep := m.eps[m.resolveLocked(a)]; ep != nil && !rec.Recorded.IsZero() && ep.Created.After(rec.Recorded) {
			m.log.Info("dropping a release recorded before the attachment was added again", "containerID", a.ContainerID, "ifName", a.IfName, "recorded", rec.Recorded, "created", ep.Created)
			_ = os.Remove(path)
			continue
		}
		if a.Validate() == nil {
			m.log.Info("applying release recorded while anetd was away", "network", a.Network, "containerID", a.ContainerID, "ifName", a.IfName)
			if err := m.deleteLocked(m.resolveLocked(a)); err != nil {
				return err
			}
		}
		_ = os.Remove(path)
	}
	return nil
}

// SetOnChange sets f to be called whenever an endpoint is added or
// deleted (the policy reconciler's Enqueue: the new endpoint gets its
// policy at once, not at the next Pod event). f is called with the
// manager's lock held: it must not block nor call the manager.
func (m *Manager) SetOnChange(f func()) { m.onChange.Store(&f) }

func (m *Manager) changed() {
	if f := m.onChange.Load(); f != nil {
		(*f)()
	}
}

// PodIfindexes returns the host-side ifindex of every endpoint by its
// pod's namespace/name (for the policy reconciler). A pod with several
// attachments gets the one named eth0, else any.
func (m *Manager) PodIfindexes() map[string]uint32 {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]uint32, len(m.eps))
	for a, ep := range m.eps {
		if ep.Pod.Namespace == "" || ep.Pod.Name == "" {
			continue
		}
		key := ep.Pod.Namespace + "/" + ep.Pod.Name
		if _, dup := out[key]; dup && a.IfName != "eth0" {
			continue
		}
		out[key] = ep.HostIfindex
	}
	return out
}
