package testnode

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Leftovers reports a directory it should read and cannot, rather than
// finding nothing in it.
func TestLeftoversReportsUnreadableDirs(t *testing.T) {
	n := New(t, Options{})
	if left := n.Leftovers(); len(left) != 0 {
		t.Fatalf("fresh node: %v", left)
	}
	records := filepath.Join(n.StateDir, "endpoints")
	moved := records + ".moved"
	if err := os.Rename(records, moved); err != nil {
		t.Fatal(err)
	}
	if left := strings.Join(n.Leftovers(), "\n"); !strings.Contains(left, "endpoint records unreadable") {
		t.Errorf("with %s gone, Leftovers = %q", records, left)
	}
	if err := os.WriteFile(records, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if left := strings.Join(n.Leftovers(), "\n"); !strings.Contains(left, "endpoint records unreadable") {
		t.Errorf("with %s a file, Leftovers = %q", records, left)
	}
	if err := os.Remove(records); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(moved, records); err != nil {
		t.Fatal(err)
	}
	if left := n.Leftovers(); len(left) != 0 {
		t.Fatalf("restored node: %v", left)
	}
}
