// Package testns puts a test into a network namespace of its own.
package testns

import (
	"runtime"
	"testing"

	"github.com/vishvananda/netns"
)

// EnterNew locks the test's goroutine to its thread and moves the thread
// into a new network namespace, until the test's cleanup moves it back
// (the namespace goes when its last reference does).
func EnterNew(t testing.TB) {
	t.Helper()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	ns, err := netns.New() // and switches this thread into it
	if err != nil {
		orig.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := netns.Set(orig); err != nil {
			t.Errorf("back to the test's netns: %v", err)
			return // the thread stays locked, and dies with the test goroutine
		}
		ns.Close()
		orig.Close()
		runtime.UnlockOSThread()
	})
}
