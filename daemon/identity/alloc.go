package identity

import (
	"errors"
	"fmt"
	"sync"
)

// ErrExhausted is returned when no pod identity number is free.
var ErrExhausted = errors.New("no free pod identity")

// Allocator gives each Key a pod identity number, the same for as long as
// some user holds it. Allocate takes a reference (and allocates the number
// on first use); Release drops one. The cluster-wide CRD-backed allocator
// (see the package documentation) implements the same interface.
type Allocator interface {
	Allocate(key Key) (uint32, error)
	Release(key Key) error
	// Lookup returns the number of a key that is allocated.
	Lookup(key Key) (uint32, bool)
}

// Local is an in-memory Allocator for tests and single-node use. Numbers
// are handed out from MinPod upwards; a released number is reused only
// after every other free number has been used once (so that a number does
// not mean two different label sets in quick succession).
type Local struct {
	mu    sync.Mutex
	byKey map[Key]*localEntry
	used  map[uint32]Key
	next  uint32
	max   uint32
}

type localEntry struct {
	id   uint32
	refs int
}

// NewLocal returns an empty local allocator.
func NewLocal() *Local { return newLocal(MaxPod) }

func newLocal(max uint32) *Local {
	return &Local{byKey: map[Key]*localEntry{}, used: map[uint32]Key{}, next: MinPod, max: max}
}

// Allocate implements Allocator.
func (l *Local) Allocate(key Key) (uint32, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e, ok := l.byKey[key]; ok {
		e.refs++
		return e.id, nil
	}
	n := l.max - MinPod + 1
	for range n {
		id := l.next
		l.next++
		if l.next > l.max {
			l.next = MinPod
		}
		if _, taken := l.used[id]; !taken {
			l.used[id] = key
			l.byKey[key] = &localEntry{id: id, refs: 1}
			return id, nil
		}
	}
	return 0, ErrExhausted
}

// Release implements Allocator.
func (l *Local) Release(key Key) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.byKey[key]
	if !ok {
		return fmt.Errorf("releasing identity %q: not allocated", key)
	}
	e.refs--
	if e.refs == 0 {
		delete(l.byKey, key)
		delete(l.used, e.id)
	}
	return nil
}

// Lookup implements Allocator.
func (l *Local) Lookup(key Key) (uint32, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e, ok := l.byKey[key]; ok {
		return e.id, true
	}
	return 0, false
}

// KeyOfID returns the key a number is allocated to.
func (l *Local) KeyOfID(id uint32) (Key, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	k, ok := l.used[id]
	return k, ok
}
