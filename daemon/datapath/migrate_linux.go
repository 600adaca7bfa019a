package datapath

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// carry is an entry's value in the layout of the new map, or false when
// it cannot be carried without guessing: a value that grew is zero-extended
// (a field appended to a struct, zero meaning "unset"); one that shrank is
// cut only where the dropped tail is zero (a field that was never used).
func carry(v []byte, size int) ([]byte, bool) {
	if size >= len(v) {
		out := make([]byte, size)
		copy(out, v)
		return out, true
	}
	for _, b := range v[size:] {
		if b != 0 {
			return nil, false
		}
	}
	return append([]byte(nil), v[:size]...), true
}

// copyEntries copies what can be copied from a pinned map of another layout
// into its replacement (see refillCopy): same type and key size, and each
// value carried by carry (per CPU for per-CPU maps). It returns how many
// entries were copied and how many were not.
func copyEntries(from, to *ebpf.Map) (copied, skipped int, err error) {
	if from.Type() != to.Type() || from.KeySize() != to.KeySize() {
		n, err := countEntries(from)
		return 0, n, err
	}
	size := int(to.ValueSize())
	var k []byte
	it := from.Iterate()
	if perCPU(from.Type()) {
		var per [][]byte
		for it.Next(&k, &per) {
			out := make([][]byte, len(per))
			ok := true
			for i, v := range per {
				if out[i], ok = carry(v, size); !ok {
					break
				}
			}
			if !ok || to.Put(k, out) != nil {
				skipped++
				continue
			}
			copied++
		}
	} else {
		var v []byte
		for it.Next(&k, &v) {
			nv, ok := carry(v, size)
			if !ok || to.Put(k, nv) != nil {
				skipped++
				continue
			}
			copied++
		}
	}
	return copied, skipped, it.Err()
}

func perCPU(t ebpf.MapType) bool {
	switch t {
	case ebpf.PerCPUHash, ebpf.PerCPUArray, ebpf.LRUCPUHash, ebpf.PerCPUCGroupStorage:
		return true
	}
	return false
}

func countEntries(m *ebpf.Map) (int, error) {
	var k []byte
	n := 0
	it := m.Iterate()
	if perCPU(m.Type()) {
		var per [][]byte
		for it.Next(&k, &per) {
			n++
		}
	} else {
		var v []byte
		for it.Next(&k, &v) {
			n++
		}
	}
	return n, it.Err()
}

// progBarrier waits until every eBPF program that is running has returned.
// Updating an element of a map-in-map makes the kernel wait for an RCU
// grace period before the syscall returns (maybe_wait_bpf_programs in
// kernel/bpf/syscall.c), and tc programs run inside an RCU read-side
// section: after the update, no program that started before it is still
// running. Nothing else waits for that from user space.
type progBarrier struct{ outer, inner *ebpf.Map }

func newProgBarrier() (*progBarrier, error) {
	innerSpec := &ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1}
	inner, err := ebpf.NewMap(innerSpec)
	if err != nil {
		return nil, fmt.Errorf("creating barrier map: %w", err)
	}
	outer, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.ArrayOfMaps, KeySize: 4, ValueSize: 4, MaxEntries: 1, InnerMap: innerSpec})
	if err != nil {
		inner.Close()
		return nil, fmt.Errorf("creating barrier map: %w", err)
	}
	return &progBarrier{outer: outer, inner: inner}, nil
}

func (b *progBarrier) wait() error {
	return b.outer.Put(uint32(0), b.inner)
}

func (b *progBarrier) close() {
	b.outer.Close()
	b.inner.Close()
}

// waitForPrograms returns once no program that may have read the maps
// before this call is still running.
func (dp *Datapath) waitForPrograms() error {
	dp.barrierMu.Lock()
	defer dp.barrierMu.Unlock()
	if dp.barrier == nil {
		b, err := newProgBarrier()
		if err != nil {
			return err
		}
		dp.barrier = b
	}
	if err := dp.barrier.wait(); err != nil {
		return errors.Join(errors.New("waiting for running programs"), err)
	}
	return nil
}
