package datapath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"sort"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/anet-dev/anet/bpf"
	"github.com/anet-dev/anet/daemon/service/lb"
)

// ErrMapFull is wrapped by the errors of ServiceMaps when a map has no
// room left for an entry (its size is an anetd flag): the reconciler counts
// and logs it, and the frontend keeps what it had before the Put.
var ErrMapFull = errors.New("eBPF map full")

// maxSlots is how many backends one frontend can have: slots are 16-bit.
const maxSlots = math.MaxUint16

// ServiceMaps is the typed wrapper of the service maps (bpf/lib/lb.h),
// the Linux implementation of lb.Map, for IPv4 frontends and
// backends. anetd is the maps' only writer; ServiceMaps keeps an index of
// what each frontend holds (built from the maps when it is made, so after
// a restart too) to know which backends, reverse-NAT and affinity-match
// entries are still used by another frontend.
type ServiceMaps struct {
	mu                                   sync.Mutex
	services, backends, revnat, affMatch *ebpf.Map

	fe       map[lb.FrontendKey]*feState
	backRefs refs[uint32]
	revRefs  refs[uint32]
	matchRef refs[bpf.SockLb4AffinityMatch]
}

// feState is what one frontend holds in the maps: each is counted once in
// the refs of ServiceMaps.
type feState struct {
	slots   int             // slots 1..slots may exist
	ids     map[uint32]bool // backends referenced
	revNats map[uint32]bool // reverse-NAT indexes (two only after a failed Put that changed it)
	matches map[bpf.SockLb4AffinityMatch]bool
}

func newFeState() *feState {
	return &feState{ids: map[uint32]bool{}, revNats: map[uint32]bool{}, matches: map[bpf.SockLb4AffinityMatch]bool{}}
}

type refs[K comparable] map[K]int

// add counts a reference to k and says whether it is the first.
func (r refs[K]) add(k K) bool { r[k]++; return r[k] == 1 }

// drop removes a reference to k and says whether it was the last.
func (r refs[K]) drop(k K) bool {
	if r[k] <= 1 {
		delete(r, k)
		return true
	}
	r[k]--
	return false
}

var _ lb.Map = (*ServiceMaps)(nil)

// ServiceMaps returns the service maps' wrapper (one per Datapath). Made
// the first time, it reads what the maps hold and prunes what no frontend
// reaches any more (slots without a master, backends no slot names,
// reverse-NAT and affinity-match entries of no frontend: leftovers of a
// crash in the middle of a Put or Delete, which no program can reach).
func (dp *Datapath) ServiceMaps() (*ServiceMaps, error) {
	dp.svcOnce.Do(func() {
		s := &ServiceMaps{
			services: dp.shared[bpf.SockMapAnetLb4Services],
			backends: dp.shared[bpf.SockMapAnetLb4Backends],
			revnat:   dp.shared[bpf.SockMapAnetLb4Revnat],
			affMatch: dp.shared[bpf.SockMapAnetLb4AffMatch],
			fe:       map[lb.FrontendKey]*feState{},
			backRefs: refs[uint32]{}, revRefs: refs[uint32]{}, matchRef: refs[bpf.SockLb4AffinityMatch]{},
		}
		if s.services == nil || s.backends == nil || s.revnat == nil || s.affMatch == nil {
			dp.svcErr = errors.New("service maps not loaded")
			return
		}
		dp.svcErr = s.restore()
		dp.svc = s
	})
	return dp.svc, dp.svcErr
}

func be32(a netip.Addr) uint32 { b := a.As4(); return binary.NativeEndian.Uint32(b[:]) }

func be16(p uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], p)
	return binary.NativeEndian.Uint16(b[:])
}

func addrOf(a uint32, p uint16) netip.AddrPort {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], a)
	var pb [2]byte
	binary.NativeEndian.PutUint16(pb[:], p)
	return netip.AddrPortFrom(netip.AddrFrom4(b), binary.BigEndian.Uint16(pb[:]))
}

func lbKey(k lb.FrontendKey, slot int) bpf.SockLb4Key {
	return bpf.SockLb4Key{
		Addr: be32(k.Addr.Addr()), Port: be16(k.Addr.Port()),
		Proto: uint8(k.Proto), Scope: uint8(k.Scope), Slot: uint16(slot),
	}
}

func frontendOf(k bpf.SockLb4Key) lb.FrontendKey {
	return lb.FrontendKey{Addr: addrOf(k.Addr, k.Port), Proto: lb.Proto(k.Proto), Scope: lb.Scope(k.Scope)}
}

func checkKey(k lb.FrontendKey) error {
	if !k.Addr.Addr().Is4() {
		return fmt.Errorf("frontend %s: only IPv4 frontends are served by the datapath", k.Addr)
	}
	if k.Proto != lb.TCP && k.Proto != lb.UDP {
		return fmt.Errorf("frontend %s: protocol %s is not served", k.Addr, k.Proto)
	}
	return nil
}

// mapErr wraps a map write's error, with ErrMapFull when the map is full.
func mapErr(what string, err error) error {
	if errors.Is(err, unix.E2BIG) {
		return fmt.Errorf("%s: %w: %w", what, ErrMapFull, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

func deleteKey(m *ebpf.Map, k any) error {
	if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return err
	}
	return nil
}

// Put programs f, so that the frontend keeps serving at every instant:
// first the backends, the reverse-NAT entry, the affinity matches and the
// slots, then the master that counts them, and only then are the slots
// above the new total and what the frontend no longer uses removed. A
// connect() that read the old master meanwhile finds slots that exist (the
// old ones or the new ones) or, for one removed under it, slot 1. Entries
// that exist are rewritten in place under their lock (BPF_F_LOCK): see
// struct lb4_service for why. On an error (ErrMapFull among
// them) the master is the old one, still serving, and what was written is
// accounted to the frontend, removed by its next Put or Delete.
func (s *ServiceMaps) Put(f lb.MapFrontend) error {
	if err := checkKey(f.Key); err != nil {
		return err
	}
	if f.RevNat == 0 {
		return fmt.Errorf("frontend %s: reverse-NAT index 0", f.Key.Addr)
	}
	if f.Active < 0 || f.Active > len(f.Backends) {
		return fmt.Errorf("frontend %s: %d active of %d backends", f.Key.Addr, f.Active, len(f.Backends))
	}
	if len(f.Backends) > maxSlots {
		return fmt.Errorf("frontend %s: %d backends, at most %d", f.Key.Addr, len(f.Backends), maxSlots)
	}
	for _, b := range f.Backends {
		if !b.Addr.Addr().Is4() {
			return fmt.Errorf("frontend %s: backend %s is not IPv4", f.Key.Addr, b.Addr)
		}
		if b.ID == 0 {
			return fmt.Errorf("frontend %s: backend %s has ID 0", f.Key.Addr, b.Addr)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()

	// st is what the frontend holds while Put runs, the old and the new
	// entries, so that a failure leaves nothing unaccounted; next is what
	// it holds once the new master is live.
	st := s.state(f.Key)
	oldSlots := st.slots
	next := newFeState()
	next.slots = len(f.Backends)

	for _, b := range f.Backends {
		v := bpf.SockLb4Backend{Id: b.ID, Addr: be32(b.Addr.Addr()), Port: be16(b.Addr.Port()), Proto: uint8(f.Key.Proto), State: uint8(b.State)}
		if err := s.backends.Update(b.ID, v, ebpf.UpdateLock); err != nil {
			return mapErr(fmt.Sprintf("frontend %s: writing backend %d", f.Key.Addr, b.ID), err)
		}
		next.ids[b.ID] = true
		if !st.ids[b.ID] {
			st.ids[b.ID] = true
			s.backRefs.add(b.ID)
		}
	}
	rv := bpf.SockLb4Revnat{Addr: be32(f.Key.Addr.Addr()), Port: be16(f.Key.Addr.Port())}
	if err := s.revnat.Put(f.RevNat, rv); err != nil {
		return mapErr(fmt.Sprintf("frontend %s: writing reverse-NAT %d", f.Key.Addr, f.RevNat), err)
	}
	next.revNats[f.RevNat] = true
	if !st.revNats[f.RevNat] {
		st.revNats[f.RevNat] = true
		s.revRefs.add(f.RevNat)
	}
	// The matches say which backends an affinity entry may still follow:
	// those of session affinity, and, for UDP, those of each unconnected
	// socket's own entry (ANET_AFFINITY_SOCKET in bpf/lib/lb.h).
	if f.Affinity > 0 || f.Key.Proto == lb.UDP {
		for _, b := range f.Backends[:f.Active] {
			m := bpf.SockLb4AffinityMatch{BackendId: b.ID, RevNat: f.RevNat, Scope: uint8(f.Key.Scope)}
			if err := s.affMatch.Put(m, uint8(1)); err != nil {
				return mapErr(fmt.Sprintf("frontend %s: writing affinity match", f.Key.Addr), err)
			}
			next.matches[m] = true
			if !st.matches[m] {
				st.matches[m] = true
				s.matchRef.add(m)
			}
		}
	}
	for i, b := range f.Backends {
		slot := bpf.SockLb4Service{RevNat: f.RevNat, BackendId: b.ID, BackendAddr: be32(b.Addr.Addr()), BackendPort: be16(b.Addr.Port())}
		if err := s.services.Update(lbKey(f.Key, i+1), slot, ebpf.UpdateLock); err != nil {
			st.slots = max(st.slots, i)
			return mapErr(fmt.Sprintf("frontend %s: writing slot %d", f.Key.Addr, i+1), err)
		}
	}
	st.slots = max(st.slots, len(f.Backends))
	master := bpf.SockLb4Service{
		Count: uint32(f.Active), Total: uint32(len(f.Backends)), RevNat: f.RevNat,
		AffinityTimeout: affinitySeconds(f.Affinity), Flags: uint32(f.Flags),
	}
	if err := s.services.Update(lbKey(f.Key, 0), master, ebpf.UpdateLock); err != nil {
		return mapErr(fmt.Sprintf("frontend %s: writing the frontend", f.Key.Addr), err)
	}

	// The new master is live: what it no longer counts goes.
	var errs []error
	for i := len(f.Backends) + 1; i <= oldSlots; i++ {
		if err := deleteKey(s.services, lbKey(f.Key, i)); err != nil {
			errs = append(errs, fmt.Errorf("deleting slot %d: %w", i, err))
		}
	}
	s.release(st, next, &errs)
	s.fe[f.Key] = next
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("frontend %s: cleaning up after the update: %w", f.Key.Addr, err)
	}
	return nil
}

// release drops what old holds and next does not (next may be nil: a
// Delete), deleting each entry no other frontend uses.
func (s *ServiceMaps) release(old, next *feState, errs *[]error) {
	if next == nil {
		next = newFeState()
	}
	for m := range old.matches {
		if next.matches[m] {
			continue
		}
		if s.matchRef.drop(m) {
			if err := deleteKey(s.affMatch, m); err != nil {
				*errs = append(*errs, fmt.Errorf("deleting affinity match: %w", err))
			}
		}
	}
	for id := range old.ids {
		if next.ids[id] {
			continue
		}
		if s.backRefs.drop(id) {
			if err := deleteKey(s.backends, id); err != nil {
				*errs = append(*errs, fmt.Errorf("deleting backend %d: %w", id, err))
			}
		}
	}
	for rn := range old.revNats {
		if next.revNats[rn] {
			continue
		}
		if s.revRefs.drop(rn) {
			if err := deleteKey(s.revnat, rn); err != nil {
				*errs = append(*errs, fmt.Errorf("deleting reverse-NAT %d: %w", rn, err))
			}
		}
	}
}

func affinitySeconds(d time.Duration) uint32 {
	if d <= 0 {
		return 0
	}
	s := (d + time.Second - 1) / time.Second
	if s > math.MaxUint32 {
		return math.MaxUint32
	}
	return uint32(s)
}

// Delete removes a frontend: its master first (from then on the socket
// hooks leave the address alone), then its slots, and the backends,
// reverse-NAT and affinity-match entries no other frontend uses.
func (s *ServiceMaps) Delete(k lb.FrontendKey) error {
	if err := checkKey(k); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	if err := deleteKey(s.services, lbKey(k, 0)); err != nil {
		return fmt.Errorf("frontend %s: deleting: %w", k.Addr, err)
	}
	st := s.fe[k]
	if st == nil {
		return nil
	}
	for i := 1; i <= st.slots; i++ {
		if err := deleteKey(s.services, lbKey(k, i)); err != nil {
			errs = append(errs, fmt.Errorf("deleting slot %d: %w", i, err))
		}
	}
	s.release(st, nil, &errs)
	delete(s.fe, k)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("frontend %s: %w", k.Addr, err)
	}
	return nil
}

// Dump returns every frontend the maps hold now, as the datapath sees it
// (read from the maps, not from the index), sorted by key.
func (s *ServiceMaps) Dump() ([]lb.MapFrontend, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	masters, slots, err := s.readServices()
	if err != nil {
		return nil, err
	}
	var out []lb.MapFrontend
	for k, m := range masters {
		f := lb.MapFrontend{
			Key: k, RevNat: m.RevNat, Flags: lb.Flags(m.Flags),
			Affinity: time.Duration(m.AffinityTimeout) * time.Second,
		}
		for i := 1; i <= int(m.Total); i++ {
			id, ok := slots[k][i]
			if !ok {
				return nil, fmt.Errorf("frontend %s: slot %d of %d missing", k.Addr, i, m.Total)
			}
			var b bpf.SockLb4Backend
			if err := s.backends.Lookup(id, &b); err != nil {
				return nil, fmt.Errorf("frontend %s: backend %d: %w", k.Addr, id, err)
			}
			f.Backends = append(f.Backends, lb.MapBackend{ID: id, Addr: addrOf(b.Addr, b.Port), State: lb.BackendState(b.State)})
		}
		f.Active = min(int(m.Count), len(f.Backends))
		out = append(out, f)
	}
	sort.Slice(out, func(i, j int) bool { return keyLess(out[i].Key, out[j].Key) })
	return out, nil
}

func keyLess(a, b lb.FrontendKey) bool {
	if c := a.Addr.Compare(b.Addr); c != 0 {
		return c < 0
	}
	if a.Proto != b.Proto {
		return a.Proto < b.Proto
	}
	return a.Scope < b.Scope
}

// readServices reads the services map: masters by frontend, and each
// frontend's slots (backend IDs by slot).
func (s *ServiceMaps) readServices() (map[lb.FrontendKey]bpf.SockLb4Service, map[lb.FrontendKey]map[int]uint32, error) {
	masters := map[lb.FrontendKey]bpf.SockLb4Service{}
	slots := map[lb.FrontendKey]map[int]uint32{}
	var k bpf.SockLb4Key
	var v bpf.SockLb4Service
	it := s.services.Iterate()
	for it.Next(&k, &v) {
		fk := frontendOf(k)
		if k.Slot == 0 {
			masters[fk] = v
			continue
		}
		if slots[fk] == nil {
			slots[fk] = map[int]uint32{}
		}
		slots[fk][int(k.Slot)] = v.BackendId
	}
	if err := it.Err(); err != nil {
		return nil, nil, fmt.Errorf("reading the services map: %w", err)
	}
	return masters, slots, nil
}

// restore builds the index from the maps and prunes what no frontend
// reaches (see Datapath.ServiceMaps).
func (s *ServiceMaps) restore() error {
	masters, slots, err := s.readServices()
	if err != nil {
		return err
	}
	var errs []error
	for k, sl := range slots {
		m, ok := masters[k]
		for i, id := range sl {
			if !ok || i > int(m.Total) {
				if err := deleteKey(s.services, lbKey(k, i)); err != nil {
					errs = append(errs, err)
				}
				continue
			}
			st := s.state(k)
			st.slots = max(st.slots, i)
			if !st.ids[id] {
				st.ids[id] = true
				s.backRefs.add(id)
			}
		}
	}
	for k, m := range masters {
		st := s.state(k)
		st.revNats[m.RevNat] = true
		s.revRefs.add(m.RevNat)
		if m.AffinityTimeout == 0 {
			continue
		}
		for i := 1; i <= int(m.Count); i++ {
			if id, ok := slots[k][i]; ok {
				mk := bpf.SockLb4AffinityMatch{BackendId: id, RevNat: m.RevNat, Scope: uint8(k.Scope)}
				if !st.matches[mk] {
					st.matches[mk] = true
					s.matchRef.add(mk)
				}
			}
		}
	}
	var id uint32
	var b bpf.SockLb4Backend
	var stale []uint32
	it := s.backends.Iterate()
	for it.Next(&id, &b) {
		if s.backRefs[id] == 0 {
			stale = append(stale, id)
		}
	}
	errs = append(errs, it.Err())
	for _, id := range stale {
		errs = append(errs, deleteKey(s.backends, id))
	}
	var rv bpf.SockLb4Revnat
	stale = stale[:0]
	it = s.revnat.Iterate()
	for it.Next(&id, &rv) {
		if s.revRefs[id] == 0 {
			stale = append(stale, id)
		}
	}
	errs = append(errs, it.Err())
	for _, id := range stale {
		errs = append(errs, deleteKey(s.revnat, id))
	}
	var mk bpf.SockLb4AffinityMatch
	var one uint8
	var staleM []bpf.SockLb4AffinityMatch
	it = s.affMatch.Iterate()
	for it.Next(&mk, &one) {
		if s.matchRef[mk] == 0 {
			staleM = append(staleM, mk)
		}
	}
	errs = append(errs, it.Err())
	for _, mk := range staleM {
		errs = append(errs, deleteKey(s.affMatch, mk))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("restoring the service maps: %w", err)
	}
	return nil
}

func (s *ServiceMaps) state(k lb.FrontendKey) *feState {
	st := s.fe[k]
	if st == nil {
		st = newFeState()
		s.fe[k] = st
	}
	return st
}
