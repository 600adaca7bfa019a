//go:build linux

package lab

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The lab shared by the tests of one package (one test binary).
var shared struct {
	sync.Mutex
	opts    Options
	l       *Lab
	err     error
	started bool
}

// sharedPrefix names the directories of shared test labs under the
// temporary directory; RunShared removes those whose owner died.
const sharedPrefix = "anet-lab-test-"

// RunShared runs a package's tests with one lab shared between them: the
// first SharedLab call brings it up with o (a temporary Dir and a unique
// Name unless given), and RunShared tears it down after the last test, and
// on SIGINT or SIGTERM. Before the tests it removes shared labs left behind
// by test binaries that were killed. Use it from TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(lab.RunShared(m, lab.Options{Nodes: 2})) }
func RunShared(m *testing.M, o Options) int {
	flag.Parse()
	if os.Geteuid() == 0 {
		reapOrphanLabs(os.Stderr)
	}
	shared.Lock()
	shared.opts = o
	shared.Unlock()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		s := <-sig
		fmt.Fprintf(os.Stderr, "lab: %v: removing the shared lab\n", s)
		shutdownShared()
		os.Exit(1)
	}()
	code := m.Run()
	signal.Stop(sig)
	if err := shutdownShared(); err != nil {
		fmt.Fprintf(os.Stderr, "lab: removing the shared lab: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

func shutdownShared() error {
	shared.Lock()
	defer shared.Unlock()
	if shared.l == nil {
		return nil
	}
	err := shared.l.Down()
	shared.l, shared.started = nil, false
	return err
}

// SharedLab returns the package's shared lab, bringing it up on first use
// (see RunShared). It skips the test when not root, and fails it when the
// lab cannot come up (every later caller fails with the same error).
func SharedLab(t testing.TB) *Lab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces, mounts, cgroups, eBPF); CI runs as root")
	}
	shared.Lock()
	defer shared.Unlock()
	if !shared.started {
		shared.started = true
		o := shared.opts
		var log bytes.Buffer
		if testing.Verbose() {
			o.Progress = io.MultiWriter(os.Stderr, &log)
		} else {
			o.Progress = &log
		}
		if o.Dir == "" {
			dir, err := os.MkdirTemp("", sharedPrefix)
			if err != nil {
				t.Fatal(err)
			}
			o.Dir = dir
		}
		if o.Name == "" {
			o.Name = "alt-" + strings.TrimPrefix(filepath.Base(o.Dir), sharedPrefix)
			if len(o.Name) > 16 {
				o.Name = o.Name[:16]
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		shared.l, shared.err = Up(ctx, o)
		if shared.err != nil {
			shared.err = fmt.Errorf("bringing the lab up: %w\nprogress:\n%s", shared.err, log.String())
			shared.l = nil
		}
	}
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.l
}

// reapOrphanLabs removes the shared test labs whose owning process is gone
// (a test binary killed by a timeout or a signal).
func reapOrphanLabs(w io.Writer) {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), sharedPrefix+"*"))
	for _, d := range dirs {
		s, err := LoadState(d)
		if err != nil {
			continue
		}
		if s.Owner.alive() {
			continue
		}
		fmt.Fprintf(w, "lab: removing %s, left by a test run that died\n", d)
		if err := DownDir(d, w); err != nil {
			fmt.Fprintf(w, "lab: %v\n", err)
		}
	}
}
