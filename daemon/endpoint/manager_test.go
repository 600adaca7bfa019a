package endpoint

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/anet-dev/anet/daemon/api"
	"github.com/anet-dev/anet/daemon/datapath"
	"github.com/anet-dev/anet/daemon/ipam"
)

// fakeDP stands in for the eBPF maps in these pure-logic tests (the real
// maps are tested in daemon/datapath and end to end in plugins/anet-cni).
type fakeDP struct {
	mu       sync.Mutex
	byIP     map[netip.Addr]uint32
	byIf     map[uint32]netip.Addr
	counters map[uint32]map[datapath.CounterKey]datapath.Counter
}

func newFakeDP() *fakeDP {
	return &fakeDP{byIP: map[netip.Addr]uint32{}, byIf: map[uint32]netip.Addr{}, counters: map[uint32]map[datapath.CounterKey]datapath.Counter{}}
}

func (f *fakeDP) UpsertEndpoint(e datapath.Endpoint) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.byIP[e.IP] = e.Ifindex
	f.byIf[e.Ifindex] = e.IP
	return nil
}

func (f *fakeDP) DeleteEndpoint(ip netip.Addr, ifindex uint32) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.byIP, ip)
	delete(f.byIf, ifindex)
	delete(f.counters, ifindex)
	return nil
}

func (f *fakeDP) DeleteEndpointEntries(ip netip.Addr, ifindex uint32) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.byIP, ip)
	delete(f.byIf, ifindex)
	return nil
}

func (f *fakeDP) MapEndpoints() (map[netip.Addr]uint32, map[uint32]netip.Addr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	a, b := map[netip.Addr]uint32{}, map[uint32]netip.Addr{}
	for k, v := range f.byIP {
		a[k] = v
	}
	for k, v := range f.byIf {
		b[k] = v
	}
	return a, b, nil
}

func (f *fakeDP) Counters() (map[uint32]map[datapath.CounterKey]datapath.Counter, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[uint32]map[datapath.CounterKey]datapath.Counter{}
	for k, v := range f.counters {
		out[k] = v
	}
	return out, nil
}

func (f *fakeDP) DeleteCountersOf(ifindex uint32) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.counters, ifindex)
	return nil
}

// mapDevices stands for the node's links: host-side name to ifindex.
type mapDevices map[string]uint32

func (d mapDevices) Exists(name string, idx uint32) bool { i, ok := d[name]; return ok && i == idx }
func (d mapDevices) Remove(name string) (bool, error) {
	_, ok := d[name]
	delete(d, name)
	return ok, nil
}
func (d mapDevices) List() ([]string, error) {
	var out []string
	for n := range d {
		out = append(out, n)
	}
	return out, nil
}

type fixture struct {
	dir     string
	dp      *fakeDP
	devices map[string]uint32
	m       *Manager
}

// fixtureManagers is the live manager of each fixture directory: a new
// fixture on the same directory (a restart) closes the one before, as a
// restarted anetd follows a dead one (whose ready-file filler would
// otherwise still be writing where the new one clears).
var fixtureManagers sync.Map // dir -> *Manager

func newFixture(t *testing.T, dir string, dp *fakeDP, devices map[string]uint32) *fixture {
	t.Helper()
	if old, ok := fixtureManagers.Load(dir); ok {
		old.(*Manager).Close()
	}
	alloc, err := ipam.New(filepath.Join(dir, "ipam"), netip.MustParsePrefix("10.244.1.0/24"), slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	m, err := New(filepath.Join(dir, "endpoints"), alloc, dp, mapDevices(devices), slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	// As anetd: records through ready files.
	if err := m.UseReadyFiles(filepath.Join(dir, "endpoints.ready")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	fixtureManagers.Store(dir, m)
	return &fixture{dir: dir, dp: dp, devices: devices, m: m}
}

func (f *fixture) add(t *testing.T, id string, ifindex uint32) api.EndpointRequest {
	t.Helper()
	att := api.Attachment{ContainerID: id, IfName: "eth0"}
	a, err := f.m.Allocate(api.AllocateRequest{Attachment: att})
	if err != nil {
		t.Fatal(err)
	}
	host := datapath.HostIfName(id, "eth0")
	r := api.EndpointRequest{Attachment: att, IP: a.IP, HostIfName: host, HostIfindex: ifindex,
		HostMAC: "02:00:00:00:00:01", PodMAC: "02:00:00:00:00:02", AttachMode: "tcx"}
	if err := f.m.Register(r); err != nil {
		t.Fatal(err)
	}
	f.devices[host] = ifindex
	return r
}

func TestRegisterAndDelete(t *testing.T) {
	f := newFixture(t, t.TempDir(), newFakeDP(), map[string]uint32{})
	r := f.add(t, "c1", 10)
	if err := f.m.Register(r); err != nil {
		t.Fatalf("same registration again: %v", err)
	}
	r2 := r
	r2.HostIfindex = 11
	if err := f.m.Register(r2); !errors.Is(err, api.ErrExists) {
		t.Fatalf("conflicting registration: %v", err)
	}
	unallocated := r
	unallocated.Attachment.ContainerID = "c9"
	if err := f.m.Register(unallocated); !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("registration without allocation: %v", err)
	}
	if f.dp.byIP[r.IP] != 10 {
		t.Fatalf("datapath not programmed: %v", f.dp.byIP)
	}
	for range 2 {
		if err := f.m.Delete(r.Attachment); err != nil {
			t.Fatal(err)
		}
	}
	if len(f.dp.byIP) != 0 || f.m.Count() != 0 {
		t.Fatalf("left after delete: %v %d", f.dp.byIP, f.m.Count())
	}
	if _, ok := f.m.ipam.Lookup(r.Attachment); ok {
		t.Fatal("address not released")
	}
}

func TestRestoreReconciles(t *testing.T) {
	dir := t.TempDir()
	dp := newFakeDP()
	devices := map[string]uint32{}
	f := newFixture(t, dir, dp, devices)
	keep := f.add(t, "keep", 10)
	gone := f.add(t, "gone", 11)
	pending := f.add(t, "pending", 12)
	// What a crash or a restart may leave: a device that went away, a map
	// entry and counters nobody owns, a release recorded by the plugin.
	delete(devices, gone.HostIfName)
	dp.byIP[netip.MustParseAddr("10.244.1.99")] = 99
	dp.byIf[99] = netip.MustParseAddr("10.244.1.99")
	dp.counters[99] = map[datapath.CounterKey]datapath.Counter{{}: {Packets: 1}}
	dp.counters[10] = map[datapath.CounterKey]datapath.Counter{{}: {Packets: 5}}
	pdir := filepath.Join(dir, "pending")
	if err := api.RecordPendingRelease(pdir, pending.HostIfName, pending.Attachment); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "endpoints", "junk.json"), []byte("{"), 0o600)

	// A new manager on the same state, as after a restart.
	g := newFixture(t, dir, dp, devices)
	if err := g.m.Restore(Pending{Releases: pdir}); err != nil {
		t.Fatal(err)
	}
	eps, err := g.m.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(eps) != 1 || eps[0].Attachment != keep.Attachment {
		t.Fatalf("after restore: %+v", eps)
	}
	if len(eps[0].Counters) != 1 || eps[0].Counters[0].Packets != 5 {
		t.Errorf("kept endpoint lost its counters: %+v", eps[0].Counters)
	}
	want := map[netip.Addr]uint32{keep.IP: 10}
	if fmt.Sprint(dp.byIP) != fmt.Sprint(want) || len(dp.byIf) != 1 || len(dp.counters) != 1 {
		t.Errorf("maps after restore: byIP %v byIf %v counters %v", dp.byIP, dp.byIf, dp.counters)
	}
	if n := len(g.m.ipam.List()); n != 1 {
		t.Errorf("%d allocations after restore, want 1", n)
	}
	if recs, _ := api.ReadPendingReleases(pdir); len(recs) != 0 {
		t.Errorf("pending releases not consumed: %v", recs)
	}
}

func TestGC(t *testing.T) {
	f := newFixture(t, t.TempDir(), newFakeDP(), map[string]uint32{})
	a := f.add(t, "a", 10)
	f.add(t, "b", 11)
	// An address allocated by an ADD that never finished.
	if _, err := f.m.Allocate(api.AllocateRequest{Attachment: api.Attachment{ContainerID: "c", IfName: "eth0"}}); err != nil {
		t.Fatal(err)
	}
	res, err := f.m.GC("", []api.Attachment{a.Attachment})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Removed) != 2 || f.m.Count() != 1 || len(f.m.ipam.List()) != 1 {
		t.Fatalf("GC removed %v; %d endpoints, %d allocations left", res.Removed, f.m.Count(), len(f.m.ipam.List()))
	}
}

func TestSetLabelsPersists(t *testing.T) {
	dir := t.TempDir()
	dp := newFakeDP()
	devices := map[string]uint32{}
	f := newFixture(t, dir, dp, devices)
	r := f.add(t, "l", 10)
	if changed, err := f.m.SetLabels(r.Attachment, map[string]string{"app": "web"}); err != nil || !changed {
		t.Fatal(changed, err)
	}
	if changed, _ := f.m.SetLabels(r.Attachment, map[string]string{"app": "web"}); changed {
		t.Error("same labels reported as a change")
	}
	if changed, err := f.m.SetLabels(api.Attachment{ContainerID: "nope", IfName: "eth0"}, nil); changed || err != nil {
		t.Error("unknown attachment:", changed, err)
	}
	g := newFixture(t, dir, dp, devices)
	if err := g.m.Restore(Pending{Releases: filepath.Join(dir, "pending")}); err != nil {
		t.Fatal(err)
	}
	ep, err := g.m.Get(r.Attachment)
	if err != nil || ep.Labels["app"] != "web" {
		t.Fatalf("after restart: %+v %v", ep, err)
	}
}

// ADD's registration and a DEL of the same attachment, raced: whatever the
// order, both end with neither an endpoint nor an allocation, and never one
// without the other.
func TestRegisterRacesDelete(t *testing.T) {
	f := newFixture(t, t.TempDir(), newFakeDP(), map[string]uint32{})
	att := api.Attachment{ContainerID: "race", IfName: "eth0"}
	host := datapath.HostIfName(att.ContainerID, att.IfName)
	registered := 0
	for i := range 1000 {
		a, err := f.m.Allocate(api.AllocateRequest{Attachment: att})
		if err != nil {
			t.Fatal(err)
		}
		r := api.EndpointRequest{Attachment: att, IP: a.IP, HostIfName: host, HostIfindex: 10,
			HostMAC: "02:00:00:00:00:01", PodMAC: "02:00:00:00:00:02", AttachMode: "tcx"}
		start := make(chan struct{})
		var wg sync.WaitGroup
		var regErr, delErr error
		wg.Add(2)
		go func() { defer wg.Done(); <-start; regErr = f.m.Register(r) }()
		go func() { defer wg.Done(); <-start; delErr = f.m.Delete(att) }()
		close(start)
		wg.Wait()
		if delErr != nil {
			t.Fatalf("round %d: DEL: %v", i, delErr)
		}
		if regErr == nil {
			registered++
		} else if !errors.Is(regErr, api.ErrInvalid) {
			t.Fatalf("round %d: register: %v", i, regErr)
		}
		_, allocated := f.m.ipam.Lookup(att)
		_, recErr := os.Stat(f.m.recordPath(att))
		if n := f.m.Count(); n != 0 || allocated || len(f.dp.byIP) != 0 || !errors.Is(recErr, os.ErrNotExist) {
			t.Fatalf("round %d (register err %v): %d endpoints, allocated %v, map %v, record %v: an endpoint outlived its allocation",
				i, regErr, n, allocated, f.dp.byIP, recErr)
		}
	}
	t.Logf("1000 rounds, register first in %d", registered)
}

// The sweep cleans up after ADDs that are over without their endpoint, and
// leaves ADDs in progress and registered endpoints alone.
// An allocation of the two-step API (Allocate, then Register) whose caller
// died in between is released with its device once it is older than
// OrphanGrace; a recent one and an endpoint's stay.
func TestSweepOrphanAllocations(t *testing.T) {
	dir := t.TempDir()
	devices := map[string]uint32{}
	f := newFixture(t, dir, newFakeDP(), devices)
	p := Pending{Releases: filepath.Join(dir, "pending")}
	r := f.add(t, "registered", 60)
	allocate := func(id string) (api.Attachment, string) {
		t.Helper()
		a := api.Attachment{ContainerID: id, IfName: "eth0"}
		if _, err := f.m.Allocate(api.AllocateRequest{Attachment: a}); err != nil {
			t.Fatal(err)
		}
		host := datapath.HostIfName(id, "eth0")
		devices[host] = 50
		return a, host
	}
	recent, _ := allocate("recent")
	old, oldHost := allocate("old")
	oldIP, _ := f.m.ipam.Lookup(old)
	past := time.Now().Add(-OrphanGrace - time.Minute)
	if err := os.Chtimes(filepath.Join(dir, "ipam", oldIP.String()), past, past); err != nil {
		t.Fatal(err)
	}
	if err := f.m.ApplyPending(p); err != nil {
		t.Fatal(err)
	}
	has := func(a api.Attachment) bool { _, ok := f.m.ipam.Lookup(a); return ok }
	if !has(recent) {
		t.Error("a recent allocation was released")
	}
	if has(old) || devices[oldHost] != 0 {
		t.Error("the old orphan's address or device is left")
	}
	if _, err := f.m.Get(r.Attachment); err != nil || !has(r.Attachment) {
		t.Errorf("the registered endpoint was swept: %v", err)
	}
}

// GC of one network removes that network's stale attachments only; records
// without a network (made before networks were recorded) stay, and DEL
// with a network finds them.
func TestGCByNetwork(t *testing.T) {
	f := newFixture(t, t.TempDir(), newFakeDP(), map[string]uint32{})
	add := func(network, id string, ifindex uint32) api.Attachment {
		t.Helper()
		att := api.Attachment{Network: network, ContainerID: id, IfName: "eth0"}
		a, err := f.m.Allocate(api.AllocateRequest{Attachment: att})
		if err != nil {
			t.Fatal(err)
		}
		host := datapath.HostIfName(id, "eth0")
		r := api.EndpointRequest{Attachment: att, IP: a.IP, HostIfName: host, HostIfindex: ifindex,
			HostMAC: "02:00:00:00:00:01", PodMAC: "02:00:00:00:00:02", AttachMode: "tcx"}
		if err := f.m.Register(r); err != nil {
			t.Fatal(err)
		}
		return att
	}
	a1, a2 := add("one", "a1", 10), add("one", "a2", 11)
	b1 := add("two", "b1", 12)
	old := add("", "old", 13)
	if _, err := f.m.Allocate(api.AllocateRequest{Attachment: api.Attachment{Network: "one", ContainerID: "old", IfName: "eth0"}}); !errors.Is(err, api.ErrExists) {
		t.Fatalf("ADD with a network of an attachment held without one: %v", err)
	}
	res, err := f.m.GC("one", []api.Attachment{{ContainerID: a1.ContainerID, IfName: a1.IfName}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Removed) != 1 || res.Removed[0] != a2 {
		t.Fatalf("GC of network one removed %v, want only %v", res.Removed, a2)
	}
	for _, a := range []api.Attachment{a1, b1, old} {
		if _, err := f.m.Get(a); err != nil {
			t.Errorf("%+v after GC of network one: %v", a, err)
		}
	}
	// A DEL after the upgrade names the network; the old record has none.
	if err := f.m.Delete(api.Attachment{Network: "two", ContainerID: "old", IfName: "eth0"}); err != nil {
		t.Fatal(err)
	}
	if _, ok := f.m.ipam.Lookup(old); ok || f.m.Count() != 2 {
		t.Fatalf("DEL with a network did not remove the record without one: %d endpoints", f.m.Count())
	}
}

// A release recorded by a DEL that anetd did not hear of applies to the
// endpoint it was for, not to a later ADD of the same attachment; a
// record without a time (older plugins) applies as before.
func TestPendingReleaseSparesLaterAdd(t *testing.T) {
	dir := t.TempDir()
	f := newFixture(t, dir, newFakeDP(), map[string]uint32{})
	p := Pending{Releases: filepath.Join(dir, "pending")}
	old := f.add(t, "old", 10)
	if err := api.RecordPendingRelease(p.Releases, old.HostIfName, old.Attachment); err != nil {
		t.Fatal(err)
	}
	if err := f.m.ApplyPending(p); err != nil {
		t.Fatal(err)
	}
	if _, err := f.m.Get(old.Attachment); err == nil {
		t.Fatal("the release did not remove the endpoint it was recorded for")
	}
	// The DEL is recorded, then the attachment is added again before
	// anetd gets to the record.
	if err := api.RecordPendingRelease(p.Releases, old.HostIfName, old.Attachment); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond)
	again := f.add(t, "old", 11)
	if err := f.m.ApplyPending(p); err != nil {
		t.Fatal(err)
	}
	if _, err := f.m.Get(again.Attachment); err != nil {
		t.Errorf("the release removed a later ADD of the attachment: %v", err)
	}
	if recs, _ := api.ReadPendingReleases(p.Releases); len(recs) != 0 {
		t.Errorf("the stale release was kept: %v", recs)
	}
	// A record without a time, as older plugins wrote it.
	if err := os.WriteFile(filepath.Join(p.Releases, again.HostIfName), []byte(`{"containerID":"old","ifName":"eth0"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := f.m.ApplyPending(p); err != nil {
		t.Fatal(err)
	}
	if _, err := f.m.Get(again.Attachment); err == nil {
		t.Error("a release without a time did not apply")
	}
}

// TestPodIfindexesAndOnChange: endpoints by pod for the policy
// reconciler, and its hook called on every add and delete.
func TestPodIfindexesAndOnChange(t *testing.T) {
	f := newFixture(t, t.TempDir(), newFakeDP(), map[string]uint32{})
	var calls int
	f.m.SetOnChange(func() { calls++ })
	att := api.Attachment{ContainerID: "c1", IfName: "eth0"}
	pod := api.PodRef{Namespace: "ns", Name: "p"}
	a, err := f.m.Allocate(api.AllocateRequest{Attachment: att, Pod: pod})
	if err != nil {
		t.Fatal(err)
	}
	host := datapath.HostIfName("c1", "eth0")
	r := api.EndpointRequest{Attachment: att, Pod: pod, IP: a.IP, HostIfName: host, HostIfindex: 12,
		HostMAC: "02:00:00:00:00:01", PodMAC: "02:00:00:00:00:02", AttachMode: "tcx"}
	if err := f.m.Register(r); err != nil {
		t.Fatal(err)
	}
	f.devices[host] = 12
	f.add(t, "c2", 13) // no pod: not listed
	if got := f.m.PodIfindexes(); len(got) != 1 || got["ns/p"] != 12 {
		t.Errorf("PodIfindexes = %v", got)
	}
	if err := f.m.Delete(att); err != nil {
		t.Fatal(err)
	}
	if calls != 3 || len(f.m.PodIfindexes()) != 0 {
		t.Errorf("%d change calls for two adds and a delete, endpoints %v", calls, f.m.PodIfindexes())
	}
}
