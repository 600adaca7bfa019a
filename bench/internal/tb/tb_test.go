package tb

import (
	"bytes"
	"context"
	"os"
	"testing"
)

func TestFatalUnwindsToDo(t *testing.T) {
	x := New(context.Background(), "x", &bytes.Buffer{})
	var order []int
	x.Cleanup(func() { order = append(order, 1) })
	after := false
	err := x.Do(func() {
		x.Cleanup(func() { order = append(order, 2) })
		x.Fatalf("boom %d", 7)
		after = true
	})
	if err == nil || err.Error() != "boom 7" || after || !x.Failed() {
		t.Fatalf("Do = %v, ran past Fatal: %v", err, after)
	}
	if err := x.Do(func() {}); err != nil {
		t.Fatal(err)
	}
	x.Cleanup(func() { panic("a failing cleanup does not stop the others") })
	x.RunCleanups()
	if len(order) != 2 || order[0] != 2 || order[1] != 1 {
		t.Fatalf("cleanups ran as %v, want [2 1]", order)
	}
	x.RunCleanups() // each runs once
	if len(order) != 2 {
		t.Fatal("a cleanup ran twice")
	}
}

func TestTempDirRemoved(t *testing.T) {
	x := New(context.Background(), "x", &bytes.Buffer{})
	d := x.TempDir()
	if _, err := os.Stat(d); err != nil {
		t.Fatal(err)
	}
	x.RunCleanups()
	if _, err := os.Stat(d); !os.IsNotExist(err) {
		t.Fatalf("%s still there: %v", d, err)
	}
}

func TestOtherPanicsGoOn(t *testing.T) {
	x := New(context.Background(), "x", &bytes.Buffer{})
	defer func() {
		if recover() == nil {
			t.Fatal("a plain panic was swallowed")
		}
	}()
	_ = x.Do(func() { panic("plain") })
}
