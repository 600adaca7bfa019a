package service

import (
	"errors"
	"fmt"
	"slices"
	"sync"
)

// ErrMapFull is what MemMap returns when a Put would exceed its size.
var ErrMapFull = errors.New("service map full")

// MemMap is a Map in memory: for the reconciler's tests, and for anetd's
// tests of its service wiring where no datapath is connected. It checks
// the contract the datapath keeps: a RevNat index is never 0 and belongs
// to one frontend, a backend ID names one address, Active is within
// Backends.
type MemMap struct {
	mu sync.Mutex
	fe map[FrontendKey]MapFrontend
	rn map[uint32]FrontendKey
	// MaxFrontends, when not 0, makes a Put of a new frontend beyond it
	// fail with ErrMapFull.
	MaxFrontends int
	// Fail, when set, is called before each Put and Delete; an error it
	// returns is returned.
	Fail func(op string, k FrontendKey) error

	Puts, Deletes int
}

// NewMemMap returns an empty MemMap.
func NewMemMap() *MemMap {
	return &MemMap{fe: map[FrontendKey]MapFrontend{}, rn: map[uint32]FrontendKey{}}
}

// Put implements Map.
func (m *MemMap) Put(f MapFrontend) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.Fail != nil {
		if err := m.Fail("put", f.Key); err != nil {
			return err
		}
	}
	if _, ok := m.fe[f.Key]; !ok && m.MaxFrontends > 0 && len(m.fe) >= m.MaxFrontends {
		return fmt.Errorf("frontend %s/%s: %w", f.Key.Addr, f.Key.Proto, ErrMapFull)
	}
	if f.RevNat == 0 {
		return fmt.Errorf("frontend %s: RevNat 0", f.Key.Addr)
	}
	if f.Active < 0 || f.Active > len(f.Backends) {
		return fmt.Errorf("frontend %s: active %d of %d backends", f.Key.Addr, f.Active, len(f.Backends))
	}
	if k, ok := m.rn[f.RevNat]; ok && k != f.Key {
		return fmt.Errorf("frontend %s: RevNat %d is %s's", f.Key.Addr, f.RevNat, k.Addr)
	}
	for _, b := range f.Backends {
		if b.ID == 0 {
			return fmt.Errorf("frontend %s: backend %s has ID 0", f.Key.Addr, b.Addr)
		}
	}
	if o, ok := m.fe[f.Key]; ok && m.rn[o.RevNat] == f.Key {
		delete(m.rn, o.RevNat)
	}
	f.Backends = slices.Clone(f.Backends)
	m.fe[f.Key] = f
	m.rn[f.RevNat] = f.Key
	m.Puts++
	return nil
}

// Delete implements Map.
func (m *MemMap) Delete(k FrontendKey) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.Fail != nil {
		if err := m.Fail("delete", k); err != nil {
			return err
		}
	}
	if o, ok := m.fe[k]; ok {
		if m.rn[o.RevNat] == k {
			delete(m.rn, o.RevNat)
		}
		delete(m.fe, k)
	}
	m.Deletes++
	return nil
}

// Dump implements Map.
func (m *MemMap) Dump() ([]MapFrontend, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]MapFrontend, 0, len(m.fe))
	for _, f := range m.fe {
		f.Backends = slices.Clone(f.Backends)
		out = append(out, f)
	}
	slices.SortFunc(out, func(a, b MapFrontend) int { return compareKeys(a.Key, b.Key) })
	return out, nil
}

// Seed puts frontends in the map as they are, unchecked: what a previous
// run (or a corrupted map) left, for tests of adoption.
func (m *MemMap) Seed(fs ...MapFrontend) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, f := range fs {
		f.Backends = slices.Clone(f.Backends)
		m.fe[f.Key] = f
		m.rn[f.RevNat] = f.Key
	}
}

// Get returns what the map holds for k.
func (m *MemMap) Get(k FrontendKey) (MapFrontend, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	f, ok := m.fe[k]
	f.Backends = slices.Clone(f.Backends)
	return f, ok
}

// Len is the number of frontends.
func (m *MemMap) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.fe)
}

// CheckIDs verifies that no backend ID names two addresses across the
// frontends (the datapath's backend table holds one address per ID).
func (m *MemMap) CheckIDs() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	addr := map[uint32]string{}
	for k, f := range m.fe {
		for _, b := range f.Backends {
			a := b.Addr.String() + "/" + k.Proto.String()
			if o, ok := addr[b.ID]; ok && o != a {
				return fmt.Errorf("backend ID %d names %s and %s", b.ID, o, a)
			}
			addr[b.ID] = a
		}
	}
	return nil
}
