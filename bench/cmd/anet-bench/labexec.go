//go:build linux

package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/anet-dev/anet/lab"
	"github.com/anet-dev/anet/lab/controlplane"
)

// What the lab sections (services, netpol) share: a lab of their own, a
// client of its API server, and the bench's helpers (svchelper.go) run in
// its pods.

// sectionLab is a lab one section brings up and takes down.
type sectionLab struct {
	*lab.Lab
	b        *bench
	what     string
	up, down time.Duration
}

// upSectionLab brings up a lab in a directory of its own under
// labPrefix, named b<run id>-<suffix> (so that it collides with no other
// lab, the bench's or anyone's); a cleanup takes it down, also when a
// later step fails or the run is interrupted.
func (b *bench) upSectionLab(ctx context.Context, what, suffix string, o lab.Options) *sectionLab {
	b.reapBenchLabs()
	dir := b.labDir()
	o.Dir, o.Name = dir, "b"+strings.TrimPrefix(b.runID, "bench")+"-"+suffix
	if o.AnetBinDir == "" {
		o.AnetBinDir = b.bin
	}
	if o.Progress == nil {
		o.Progress = &prefixWriter{w: os.Stderr, prefix: "  lab " + what + " "}
	}
	start := time.Now()
	l, err := lab.Up(ctx, o)
	if err != nil {
		b.t.Fatalf("%s lab: %v", what, err)
	}
	s := &sectionLab{Lab: l, b: b, what: what, up: time.Since(start)}
	b.t.Cleanup(s.Down) // Down is idempotent
	return s
}

// labDir makes a directory for a lab of the bench; a cleanup removes it
// if no lab was written into it (Down removes a lab's; one that still
// holds a lab is left to `anet-lab down --dir`, or the next run's
// reaping).
func (b *bench) labDir() string {
	dir, err := os.MkdirTemp("", labPrefix)
	if err != nil {
		b.t.Fatal(err)
	}
	b.t.Cleanup(func() {
		if _, err := os.Stat(filepath.Join(dir, lab.StateFile)); os.IsNotExist(err) {
			_ = os.RemoveAll(dir)
		}
	})
	return dir
}

// Down takes the lab down once and times that.
func (s *sectionLab) Down() {
	start := time.Now()
	if err := s.Lab.Down(); err != nil {
		s.b.logf("%s lab: down: %v", s.what, err)
	}
	if s.down == 0 {
		s.down = time.Since(start)
	}
}

// labClientset is a client of the lab's API server with room for a
// section's bursts, dialling from the control plane's netns (nothing of
// the lab is reachable from the machine's).
func labClientset(l *lab.Lab) (*kubernetes.Clientset, error) {
	st := l.State()
	rc, err := clientcmd.BuildConfigFromFlags("", st.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	rc.Dial = controlplane.DialIn(st.ControlPlaneNS)
	rc.QPS, rc.Burst = 2000, 4000
	return kubernetes.NewForConfig(rc)
}

// podHelper starts argv in a pod (lab.ExecCmd: its netns and cgroup) with
// env added, and waits until it prints "ready" on its first line; its
// other stdout lines go to lines (if not nil; closed when it exits).
// stopAll ends it.
func (b *bench) podHelper(ctx context.Context, l *lab.Lab, ns, pod string, argv, env []string, lines chan<- string) (*proc, error) {
	cmd, err := l.ExecCmd(ns, pod, argv...)
	if err != nil {
		return nil, err
	}
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr.Setpgid = true
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	var errb bytes.Buffer
	cmd.Stderr = &errb
	pr := &proc{cmd: cmd, out: &errb, done: make(chan struct{})}
	b.procMu.Lock()
	if err := cmd.Start(); err != nil {
		b.procMu.Unlock()
		return nil, err
	}
	b.procs[cmd.Process.Pid] = pr
	b.procMu.Unlock()
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		ok := sc.Scan() && sc.Text() == "ready"
		ready <- ok
		for sc.Scan() {
			if lines != nil {
				lines <- sc.Text()
			}
		}
		if lines != nil {
			close(lines)
		}
		pr.err = cmd.Wait()
		b.procMu.Lock()
		delete(b.procs, cmd.Process.Pid)
		b.procMu.Unlock()
		close(pr.done)
	}()
	select {
	case ok := <-ready:
		if !ok {
			<-pr.done
			return nil, fmt.Errorf("did not start: %v %s", pr.err, strings.TrimSpace(errb.String()))
		}
	case <-time.After(10 * time.Second):
		pr.stop()
		return nil, fmt.Errorf("not ready after 10 s")
	case <-ctx.Done():
		pr.stop()
		return nil, ctx.Err()
	}
	return pr, nil
}

// runHelper runs argv in a pod with env added until it exits and returns
// its stdout.
func runHelper(l *lab.Lab, ns, pod string, argv, env []string) ([]byte, error) {
	cmd, err := l.ExecCmd(ns, pod, argv...)
	if err != nil {
		return nil, err
	}
	cmd.Env = append(os.Environ(), env...)
	var errb bytes.Buffer
	cmd.Stderr = &errb
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%w: %s", err, strings.TrimSpace(errb.String()))
	}
	return out, nil
}
