package policy

import (
	"slices"
	"testing"
)

func TestPortRanges(t *testing.T) {
	for _, c := range []struct {
		a, b uint16
		want []PortBlock
	}{
		{80, 80, []PortBlock{{80, 16}}},
		{80, 81, []PortBlock{{80, 15}}},
		{81, 82, []PortBlock{{81, 16}, {82, 16}}},
		{0, 65535, []PortBlock{{0, 0}}},
		{1, 65535, []PortBlock{{1, 16}, {2, 15}, {4, 14}, {8, 13}, {16, 12}, {32, 11}, {64, 10}, {128, 9}, {256, 8}, {512, 7}, {1024, 6}, {2048, 5}, {4096, 4}, {8192, 3}, {16384, 2}, {32768, 1}}},
		{32000, 32768, []PortBlock{{32000, 8}, {32256, 7}, {32768, 16}}},
		{65535, 65535, []PortBlock{{65535, 16}}},
		{5, 4, nil},
	} {
		if got := PortRanges(c.a, c.b); !slices.Equal(got, c.want) {
			t.Errorf("PortRanges(%d, %d) = %v, want %v", c.a, c.b, got, c.want)
		}
	}
}

// checkPortRanges compares PortRanges(a, b) with a brute-force walk over
// every port: each port is covered exactly when it lies in [a, b], by one
// block only, blocks are aligned and ordered, and their number is the
// minimum (no two neighbours could merge into one aligned block).
func checkPortRanges(t *testing.T, a, b uint16) {
	blocks := PortRanges(a, b)
	if len(blocks) > 30 {
		t.Fatalf("PortRanges(%d, %d): %d blocks", a, b, len(blocks))
	}
	for i, bl := range blocks {
		if bl.PrefixLen > 16 {
			t.Fatalf("PortRanges(%d, %d): prefix length %d", a, b, bl.PrefixLen)
		}
		if bl.PrefixLen < 16 && bl.Port&(1<<(16-bl.PrefixLen)-1) != 0 {
			t.Fatalf("PortRanges(%d, %d): block %v not aligned", a, b, bl)
		}
		if i > 0 && blocks[i-1].Port >= bl.Port {
			t.Fatalf("PortRanges(%d, %d): blocks out of order", a, b)
		}
		if i > 0 {
			p := blocks[i-1]
			if p.PrefixLen == bl.PrefixLen && p.PrefixLen > 0 && p.Port>>(17-p.PrefixLen)<<(17-p.PrefixLen) == p.Port && bl.Port == p.Port+1<<(16-p.PrefixLen) {
				t.Fatalf("PortRanges(%d, %d): %v and %v could be one block", a, b, p, bl)
			}
		}
	}
	for port := 0; port <= 65535; port++ {
		n := 0
		for _, bl := range blocks {
			if portMatches(bl.Port, bl.PrefixLen, uint16(port)) {
				n++
			}
		}
		in := uint16(port) >= a && uint16(port) <= b
		if (in && n != 1) || (!in && n != 0) {
			t.Fatalf("PortRanges(%d, %d) = %v: port %d covered %d times", a, b, blocks, port, n)
		}
	}
}

func FuzzPortRanges(f *testing.F) {
	for _, c := range [][2]uint16{{0, 0}, {80, 81}, {1, 65535}, {0, 65535}, {1000, 2000}, {65534, 65535}, {3, 2}} {
		f.Add(c[0], c[1])
	}
	f.Fuzz(func(t *testing.T, a, b uint16) { checkPortRanges(t, a, b) })
}
