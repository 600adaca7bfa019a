//go:build linux

package lab

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// AddNode adds a node to the running lab, as Up makes each of its nodes:
// the next free name (node<N+1>) and address, its namespace on the
// fabric, containerd with the images, kubelet, and anetd; it returns
// once the node is Ready and the control plane routes to its pod CIDR.
// The other nodes learn of it from its Node object, as they would of any
// node joining a cluster.
func (l *Lab) AddNode(ctx context.Context) (*NodeRec, error) {
	s := l.st.get()
	if !s.Ready {
		return nil, fmt.Errorf("lab %s is not up", l.Dir)
	}
	if l.opts.KubeProxy != "" || l.opts.CNI == CNIBridge {
		return nil, fmt.Errorf("lab: adding a node to a lab with kube-proxy or the bridge CNI is not supported")
	}
	next := 0
	for _, n := range l.Nodes {
		if i, err := strconv.Atoi(strings.TrimPrefix(n.Name, "node")); err == nil && i > next {
			next = i
		}
	}
	next++
	if next > maxNodes {
		return nil, fmt.Errorf("lab: %d nodes at most", maxNodes)
	}
	start := time.Now()
	l.say("adding %s at %s", NodeName(next), NodeIP(next))
	// A lab opened from its state builds nothing anew.
	if l.opts.AnetBinDir == "" {
		l.opts.AnetBinDir = s.AnetBinDir
	}
	if l.opts.KubernetesBinDir == "" {
		l.opts.KubernetesBinDir = s.KubernetesBinDir
	}
	bins, err := l.binaries(ctx)
	if err != nil {
		return nil, err
	}
	if err := l.join(l.Name+"-"+NodeName(next), NodeName(next), NodeIP(next)); err != nil {
		return nil, err
	}
	n, err := l.prepareNode(next)
	if err != nil {
		return nil, err
	}
	imgs, err := l.buildImages()
	if err != nil {
		return nil, err
	}
	if l.opts.DNS {
		tarball, _, err := l.buildDNSImage(bins.coredns, bins.corednsVersion)
		if err != nil {
			return nil, err
		}
		imgs = append(imgs, tarball)
	}
	if err := l.startNode(ctx, n, bins, imgs); err != nil {
		return nil, fmt.Errorf("%s: %w", n.Name, err)
	}
	if err := l.startAnetd(ctx, n, bins); err != nil {
		return nil, fmt.Errorf("%s: %w", n.Name, err)
	}
	if err := l.WaitNodesReady(ctx, 3*time.Minute); err != nil {
		return nil, err
	}
	if err := l.routePodCIDRs(ctx); err != nil {
		return nil, err
	}
	l.say("%s added in %.1fs", n.Name, time.Since(start).Seconds())
	rec := *n
	return &rec, nil
}

// SetProgress makes the lab's progress lines go to w (a lab opened with
// Open says nothing by default).
func (l *Lab) SetProgress(w io.Writer) { l.progress = w }

// nodeState is the part of the state that is node's: its processes,
// namespace, mounts, cgroups and the routes through it, with the node's
// directory as the Dir (what downState removes last).
func nodeState(s State, n NodeRec) State {
	sub := State{Name: s.Name, Dir: n.Dir, Nodes: []NodeRec{n}, CgroupV2Mount: s.CgroupV2Mount}
	for _, p := range s.Procs {
		if strings.HasPrefix(p.Name, n.Name+"/") {
			sub.Procs = append(sub.Procs, p)
		}
	}
	if slices.Contains(s.Netns, n.Netns) {
		sub.Netns = []string{n.Netns}
	}
	for _, m := range s.Mounts {
		if m == n.MountNS || strings.HasPrefix(m, n.Dir+"/") {
			sub.Mounts = append(sub.Mounts, m)
		}
	}
	for _, c := range s.Cgroups {
		if filepath.Base(c) == n.CgroupName || strings.Contains(c, "/"+n.CgroupName+"/") {
			sub.Cgroups = append(sub.Cgroups, c)
		}
	}
	for _, r := range s.Routes {
		if r.Netns == n.Netns || r.Via == n.Address {
			sub.Routes = append(sub.Routes, r)
		}
	}
	return sub
}

// RemoveNode takes a node out of the running lab: its Node object is
// deleted (the other nodes drop it, as when a node leaves a cluster)
// once everything the lab made for it is gone, as Down does for the whole
// lab: its processes and pods, the control plane's route through it, its
// mounts, namespace, cgroups and directory.
func (l *Lab) RemoveNode(name string) error {
	n, ok := l.Node(name)
	if !ok {
		return fmt.Errorf("no node %q in this lab", name)
	}
	if len(l.Nodes) == 1 {
		return fmt.Errorf("lab: %s is the last node (anet-lab down removes the lab)", name)
	}
	start := time.Now()
	// Its processes first: a kubelet that runs registers its Node again.
	sub := nodeState(l.st.get(), *n)
	if err := downState(&stateStore{s: sub}, nil, l.progress, l.start); err != nil {
		return fmt.Errorf("removing %s: %w", name, err)
	}
	if out, err := l.Kubectl("delete", "node", name, "--wait=true", "--timeout=60s"); err != nil && !strings.Contains(err.Error(), "NotFound") {
		return fmt.Errorf("deleting node %s: %v: %s", name, err, out)
	}
	// New slices, not DeleteFunc in place: a State a caller holds (from
	// State, before the removal) shares the old ones.
	err := l.st.update(func(s *State) {
		s.Nodes = without(s.Nodes, func(r NodeRec) bool { return r.Name == name })
		s.Procs = without(s.Procs, func(p Proc) bool {
			return slices.ContainsFunc(sub.Procs, func(q Proc) bool { return q.Name == p.Name })
		})
		s.Netns = without(s.Netns, func(x string) bool { return slices.Contains(sub.Netns, x) })
		s.Mounts = without(s.Mounts, func(x string) bool { return slices.Contains(sub.Mounts, x) })
		s.Cgroups = without(s.Cgroups, func(x string) bool { return slices.Contains(sub.Cgroups, x) })
		s.Routes = without(s.Routes, func(x Route) bool { return slices.Contains(sub.Routes, x) })
	})
	l.Nodes = without(l.Nodes, func(r NodeRec) bool { return r.Name == name })
	if err != nil {
		return err
	}
	l.say("%s removed in %.1fs", name, time.Since(start).Seconds())
	return nil
}

// without is a new slice of the elements of xs that drop does not match.
func without[T any](xs []T, drop func(T) bool) []T {
	var out []T
	for _, x := range xs {
		if !drop(x) {
			out = append(out, x)
		}
	}
	return out
}

// NodeLeftovers lists what is left of a node RemoveNode took out, given
// the lab's state from before (empty: nothing).
func NodeLeftovers(before *State, node string) []string {
	for _, n := range before.Nodes {
		if n.Name == node {
			sub := nodeState(*before, n)
			return Leftovers(&sub)
		}
	}
	return []string{"no node " + node + " in the state"}
}
