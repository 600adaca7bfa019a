package service

import (
	"errors"
	"fmt"
	"slices"
)

// ErrNoID is returned when every ID of a kind is in use.
var ErrNoID = errors.New("no free ID")

// idAlloc hands out IDs 1..max. IDs never used come first; after that,
// released IDs are reused oldest first, so that an ID that a conntrack or
// affinity entry may still name is taken again as late as possible.
type idAlloc struct {
	what string
	max  uint32
	next uint32   // the lowest ID never handed out
	free []uint32 // released IDs, oldest first, from head
	head int
	n    int // in use
}

func newIDAlloc(what string, max uint32) *idAlloc {
	return &idAlloc{what: what, max: max, next: 1}
}

// adopt marks the IDs a previous run left in the maps as in use (each
// once, all valid: the caller checks). It must be called before any get.
func (a *idAlloc) adopt(used []uint32) {
	used = slices.Clone(used)
	slices.Sort(used)
	used = slices.Compact(used)
	a.n = len(used)
	if len(used) == 0 {
		return
	}
	top := used[len(used)-1]
	i := 0
	for id := uint32(1); id < top; id++ {
		if i < len(used) && used[i] == id {
			i++
			continue
		}
		a.free = append(a.free, id)
	}
	a.next = top + 1
}

func (a *idAlloc) get() (uint32, error) {
	if a.next != 0 && a.next <= a.max {
		id := a.next
		a.next++
		if a.next == 0 { // wrapped at 2^32: never again
			a.next = a.max + 1
		}
		a.n++
		return id, nil
	}
	if a.head < len(a.free) {
		id := a.free[a.head]
		a.head++
		if a.head > 1024 && a.head*2 > len(a.free) {
			a.free = slices.Clone(a.free[a.head:])
			a.head = 0
		}
		a.n++
		return id, nil
	}
	return 0, fmt.Errorf("%w: all %d %s in use", ErrNoID, a.max, a.what)
}

func (a *idAlloc) put(id uint32) {
	a.free = append(a.free, id)
	a.n--
}

// valid says whether id is one this allocator could have handed out.
func (a *idAlloc) valid(id uint32) bool { return id != 0 && id <= a.max }

func (a *idAlloc) inUse() int { return a.n }
