package policy

import "math/bits"

// PortBlock is an aligned block of ports: the ports whose PrefixLen high
// bits equal Port's (Port's other bits are zero).
type PortBlock struct {
	Port      uint16
	PrefixLen uint8
}

// PortRanges splits the port range [first, last] into the fewest aligned
// prefix blocks, in increasing order (at most 30 for 16-bit ports). It
// returns nil when first > last.
func PortRanges(first, last uint16) []PortBlock {
	if first > last {
		return nil
	}
	var out []PortBlock
	a, b := uint32(first), uint32(last)
	for a <= b {
		// The largest block aligned at a...
		k := 16
		if a != 0 {
			k = bits.TrailingZeros32(a)
			if k > 16 {
				k = 16
			}
		}
		// ...that does not run past b.
		for a+(1<<k)-1 > b {
			k--
		}
		out = append(out, PortBlock{Port: uint16(a), PrefixLen: uint8(16 - k)})
		a += 1 << k
	}
	return out
}

// portMatches reports whether port lies in the block (port, plen).
func portMatches(blockPort uint16, plen uint8, port uint16) bool {
	if plen == 0 {
		return true
	}
	if plen > 16 {
		return false
	}
	shift := 16 - plen
	return blockPort>>shift == port>>shift
}
