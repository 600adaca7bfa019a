package datapath

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
)

// Layout fingerprints.
//
// The kernel compares a pinned map with a new build's only by type, sizes,
// entries and flags (ebpf.MapSpec.Compatible): a struct whose fields are
// reordered, renamed or given another meaning at the same size would be
// reused as it is, its entries read the new way. So Activate records, in a
// map of its own pinned beside the others, a fingerprint of each map's key
// and value types as the build's BTF describes them (member names, offsets
// and types, recursively), and Load migrates a map whose fingerprint
// differs even when the kernel finds it compatible. Such a map's entries
// are not copied (same sizes, another meaning: copying would be guessing);
// maps rebuilt from anetd's records are rebuilt as always.

// layoutsName is the pin of the fingerprints map, under the maps directory.
const layoutsName = "anet_layouts"

// layoutKey is a map's name, zero-padded, cut at 16 bytes: names longer
// than that (anet_lb4_services) are told apart by their first 16 bytes,
// which therefore differ for every map (checked by TestMapNamesDistinct).
type layoutKey [16]byte

func layoutKeyOf(name string) layoutKey {
	var k layoutKey
	copy(k[:], name)
	return k
}

// fingerprint describes a map spec's key and value types. A spec without
// BTF has only its sizes, which Compatible already compares.
func fingerprint(ms *ebpf.MapSpec) [32]byte {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %d %d|", ms.Type, ms.KeySize, ms.ValueSize)
	describeType(&b, ms.Key, 0)
	b.WriteString("|")
	describeType(&b, ms.Value, 0)
	return sha256.Sum256([]byte(b.String()))
}

func describeType(b *strings.Builder, t btf.Type, depth int) {
	if t == nil {
		b.WriteString("-")
		return
	}
	if depth > 16 {
		b.WriteString("...")
		return
	}
	switch t := t.(type) {
	case *btf.Struct:
		fmt.Fprintf(b, "struct %s %d{", t.Name, t.Size)
		for _, m := range t.Members {
			fmt.Fprintf(b, "%s@%d:%d ", m.Name, m.Offset, m.BitfieldSize)
			describeType(b, m.Type, depth+1)
			b.WriteString(";")
		}
		b.WriteString("}")
	case *btf.Union:
		fmt.Fprintf(b, "union %s %d{", t.Name, t.Size)
		for _, m := range t.Members {
			fmt.Fprintf(b, "%s@%d ", m.Name, m.Offset)
			describeType(b, m.Type, depth+1)
			b.WriteString(";")
		}
		b.WriteString("}")
	case *btf.Int:
		fmt.Fprintf(b, "int %s %d %v", t.Name, t.Size, t.Encoding)
	case *btf.Array:
		fmt.Fprintf(b, "[%d]", t.Nelems)
		describeType(b, t.Type, depth+1)
	case *btf.Typedef:
		fmt.Fprintf(b, "typedef %s ", t.Name)
		describeType(b, t.Type, depth+1)
	case *btf.Enum:
		fmt.Fprintf(b, "enum %s %d", t.Name, t.Size)
	case *btf.Volatile:
		describeType(b, t.Type, depth+1)
	case *btf.Const:
		describeType(b, t.Type, depth+1)
	default:
		fmt.Fprintf(b, "%T %s", t, t.TypeName())
	}
}

// readLayouts returns the fingerprints recorded by the last Activate, by
// map name as recorded (layoutKeyOf: the first 16 bytes); none when there
// is no record (a first start, or a build from before fingerprints).
func readLayouts(l Layout) (map[layoutKey][32]byte, error) {
	m, err := ebpf.LoadPinnedMap(l.MapPin(layoutsName), nil)
	if errors.Is(err, os.ErrNotExist) {
		return map[layoutKey][32]byte{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", l.MapPin(layoutsName), err)
	}
	defer m.Close()
	out := map[layoutKey][32]byte{}
	var k layoutKey
	var v [32]byte
	it := m.Iterate()
	for it.Next(&k, &v) {
		out[k] = v
	}
	return out, it.Err()
}

// writeLayouts records the fingerprints of the maps now pinned.
func writeLayouts(l Layout, fps map[string][32]byte) error {
	m, err := ebpf.LoadPinnedMap(l.MapPin(layoutsName), nil)
	if errors.Is(err, os.ErrNotExist) {
		m, err = ebpf.NewMap(&ebpf.MapSpec{Name: layoutsName, Type: ebpf.Hash, KeySize: 16, ValueSize: 32, MaxEntries: 64})
		if err == nil {
			if perr := pinReplace(m, l.MapPin(layoutsName)); perr != nil {
				m.Close()
				return perr
			}
		}
	}
	if err != nil {
		return fmt.Errorf("fingerprints map: %w", err)
	}
	defer m.Close()
	for name, fp := range fps {
		if err := m.Put(layoutKeyOf(name), fp); err != nil {
			return fmt.Errorf("recording the layout of %s: %w", name, err)
		}
	}
	return nil
}
