package datapath

import (
	"os"
	"regexp"
	"strconv"
	"testing"
)

// The C enum is the source of truth for the values the kernel writes; the Go
// names are what users see. They must agree.
func TestReasonsMatchC(t *testing.T) {
	hdr, err := os.ReadFile("../../bpf/lib/common.h")
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`(?m)^\s*((?:REASON|DROP)_[A-Z0-9_]+)\s*=\s*(\d+),`)
	got := map[string]int{}
	for _, m := range re.FindAllSubmatch(hdr, -1) {
		v, _ := strconv.Atoi(string(m[2]))
		got[string(m[1])] = v
	}
	if len(got) != int(reasonMax) {
		t.Fatalf("C enum has %d reasons, Go has %d", len(got), reasonMax)
	}
	for r := Reason(0); r < reasonMax; r++ {
		v, ok := got[cNames[r]]
		if !ok || v != int(r) {
			t.Errorf("%s: Go %d, C %d (present %v)", cNames[r], r, v, ok)
		}
		if reasonNames[r] == "" {
			t.Errorf("reason %d has no name", r)
		}
	}
}
