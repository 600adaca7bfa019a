// Package tb lets a program use helpers written for tests (lab/testnode)
// outside `go test`. T is a testing.TB whose Fatal unwinds to the nearest
// Do on the same goroutine (as t.Fatal ends a test's goroutine), and whose
// cleanups run when the program says so, last registered first.
//
// Call helpers that may Fatal only inside Do and only from the goroutine
// that called Do: a Fatal anywhere else is a panic that ends the program
// without cleaning up.
package tb

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"testing"
)

// T implements testing.TB. The embedded interface is nil: it only supplies
// the unexported method; every method a helper can call is defined below.
type T struct {
	testing.TB

	name string
	out  io.Writer
	ctx  context.Context

	mu       sync.Mutex
	cleanups []func()
	failed   bool
	skipped  bool
}

// fatal is what Fatal and FailNow panic with; Do recovers it.
type fatal struct{ msg string }

// New returns a T that logs to out and whose Context is ctx.
func New(ctx context.Context, name string, out io.Writer) *T {
	return &T{name: name, out: out, ctx: ctx}
}

// Do runs f. A Fatal, FailNow or Skip inside f ends f and becomes the
// error returned; any other panic goes on.
func (t *T) Do(f func()) (err error) {
	defer func() {
		if r := recover(); r != nil {
			if ft, ok := r.(fatal); ok {
				err = errors.New(ft.msg)
				return
			}
			panic(r)
		}
	}()
	f()
	return nil
}

// RunCleanups runs the registered cleanups, last first, each once. A
// cleanup that fails through Fatal or panics is reported and the others
// still run.
func (t *T) RunCleanups() {
	for {
		t.mu.Lock()
		n := len(t.cleanups)
		if n == 0 {
			t.mu.Unlock()
			return
		}
		f := t.cleanups[n-1]
		t.cleanups = t.cleanups[:n-1]
		t.mu.Unlock()
		func() {
			defer func() {
				if r := recover(); r != nil {
					fmt.Fprintf(t.out, "cleanup: %v\n", r)
				}
			}()
			f()
		}()
	}
}

func (t *T) Helper()                  {}
func (t *T) Name() string             { return t.name }
func (t *T) Context() context.Context { return t.ctx }
func (t *T) Output() io.Writer        { return t.out }
func (t *T) Attr(key, value string)   {}

func (t *T) Cleanup(f func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.cleanups = append(t.cleanups, f)
}

func (t *T) Log(args ...any)                 { fmt.Fprintln(t.out, args...) }
func (t *T) Logf(format string, args ...any) { fmt.Fprintf(t.out, format+"\n", args...) }

func (t *T) Fail() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.failed = true
}

func (t *T) Failed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.failed
}

func (t *T) Error(args ...any)                 { t.Log(args...); t.Fail() }
func (t *T) Errorf(format string, args ...any) { t.Logf(format, args...); t.Fail() }
func (t *T) FailNow()                          { t.Fail(); panic(fatal{"FailNow"}) }
func (t *T) Fatal(args ...any)                 { t.Fail(); panic(fatal{fmt.Sprint(args...)}) }
func (t *T) Fatalf(format string, args ...any) { t.Fail(); panic(fatal{fmt.Sprintf(format, args...)}) }

func (t *T) skip(msg string) {
	t.mu.Lock()
	t.skipped = true
	t.mu.Unlock()
	panic(fatal{"skipped: " + msg})
}

func (t *T) Skip(args ...any)                 { t.skip(fmt.Sprint(args...)) }
func (t *T) Skipf(format string, args ...any) { t.skip(fmt.Sprintf(format, args...)) }
func (t *T) SkipNow()                         { t.skip("SkipNow") }

func (t *T) Skipped() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.skipped
}

// TempDir makes a directory that a cleanup removes.
func (t *T) TempDir() string {
	d, err := os.MkdirTemp("", "anet-bench-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(d) })
	return d
}

// ArtifactDir is TempDir: nothing a program makes outlives it.
func (t *T) ArtifactDir() string { return t.TempDir() }

func (t *T) Setenv(key, value string) {
	old, had := os.LookupEnv(key)
	if err := os.Setenv(key, value); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if had {
			_ = os.Setenv(key, old)
		} else {
			_ = os.Unsetenv(key)
		}
	})
}

func (t *T) Chdir(dir string) {
	old, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chdir(dir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Chdir(old) })
}
