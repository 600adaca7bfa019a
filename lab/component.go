//go:build linux

package lab

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"syscall"
	"time"
)

// Component returns the record of a node component, named
// "<node>/containerd", "<node>/kubelet" or "<node>/anetd".
func (l *Lab) Component(name string) (Proc, bool) {
	s := l.st.get()
	i := slices.IndexFunc(s.Procs, func(p Proc) bool { return p.Name == name })
	if i < 0 {
		return Proc{}, false
	}
	return s.Procs[i], true
}

// Running tells whether a node component runs.
func (l *Lab) Running(name string) bool {
	p, ok := l.Component(name)
	return ok && p.alive()
}

// Kill sends sig to a node component and waits until it is gone (SIGTERM:
// up to 30 s, then SIGKILL). It stays down until Start.
func (l *Lab) Kill(name string, sig syscall.Signal) error {
	p, ok := l.Component(name)
	if !ok {
		return fmt.Errorf("no component %q", name)
	}
	if !p.alive() {
		return nil
	}
	if sig == syscall.SIGTERM {
		return p.stop(30 * time.Second)
	}
	if err := syscall.Kill(p.PID, sig); err != nil {
		return err
	}
	if !waitGone(p, 30*time.Second) {
		return fmt.Errorf("%s (pid %d) still runs 30s after %v", name, p.PID, sig)
	}
	return nil
}

// Start starts a node component again with its recorded command line (in
// its node's namespaces); for anetd it waits until anetd is ready.
func (l *Lab) Start(ctx context.Context, name string) error {
	old, ok := l.Component(name)
	if !ok {
		return fmt.Errorf("no component %q", name)
	}
	if old.alive() {
		return fmt.Errorf("%s runs already (pid %d)", name, old.PID)
	}
	if len(old.Argv) == 0 {
		return fmt.Errorf("%s cannot be restarted (no command line recorded)", name)
	}
	p, err := spawn(name, old.Netns, old.MountNS, old.Log, old.Argv...)
	if err != nil {
		return err
	}
	if err := l.st.update(func(s *State) {
		for i := range s.Procs {
			if s.Procs[i].Name == name {
				s.Procs[i] = p
			}
		}
	}); err != nil {
		return err
	}
	if node, comp, _ := strings.Cut(name, "/"); comp == "anetd" {
		n, ok := l.Node(node)
		if !ok {
			return fmt.Errorf("no node %q", node)
		}
		return waitAnetd(ctx, p, n.Socket)
	}
	return nil
}

// Restart is Kill then Start.
func (l *Lab) Restart(ctx context.Context, name string, sig syscall.Signal) error {
	if err := l.Kill(name, sig); err != nil {
		return err
	}
	return l.Start(ctx, name)
}
