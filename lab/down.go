//go:build linux

package lab

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/anet-dev/anet/lab/controlplane"
)

// DownDir removes the lab recorded in dir/state.json: it stops every
// process (kubelets first, then the pods' processes, containerd and its
// shims, anetd, the control plane, and anything else still in the lab's
// namespaces), unmounts in reverse order, deletes the namespaces (and with
// them every veth and the bridge), removes the cgroups, restores the
// sysctls and removes the directories. It is idempotent: a dir without a
// state file is already down. It works after a crash or SIGKILL of the
// process that brought the lab up.
func DownDir(dir string, progress io.Writer) error {
	if progress == nil {
		progress = io.Discard
	}
	if _, err := os.Stat(filepath.Join(dir, StateFile)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	unlock, err := lockDir(dir)
	if err != nil {
		return err
	}
	defer unlock()
	s, err := LoadState(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	return downState(&stateStore{path: filepath.Join(dir, StateFile), s: *s}, nil, progress, time.Now())
}

func downState(st *stateStore, cp *controlplane.ControlPlane, progress io.Writer, start time.Time) error {
	s := st.get()
	say := func(format string, args ...any) {
		fmt.Fprintf(progress, "[%6.1fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
	}
	t0 := time.Now()
	say("down: lab %q in %s", s.Name, s.Dir)
	var errs []error
	keep := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}

	stop := func(p Proc, grace time.Duration) {
		t := time.Now()
		keep(p.stop(grace))
		if d := time.Since(t); d > time.Second {
			say("%s (pid %d) took %.1fs to stop", p.Name, p.PID, d.Seconds())
		}
	}
	// Processes. Kubelets first, so that nothing restarts what goes next.
	isKind := func(p Proc, kind string) bool { return strings.HasSuffix(p.Name, "/"+kind) }
	for _, p := range s.Procs {
		if isKind(p, "kubelet") {
			stop(p, 5*time.Second)
		}
	}
	for _, n := range s.Nodes {
		// Only in a cgroup the lab made: a node is recorded before its
		// cgroups, and the name may be another lab's.
		cg := filepath.Join("/sys/fs/cgroup/pids", n.CgroupName)
		if !slices.Contains(s.Cgroups, cg) {
			continue
		}
		if pids := pidsInCgroup(cg); len(pids) > 0 {
			say("%s: killing %d pod process(es)", n.Name, len(pids))
			keep(killAll(pids, n.Name+" pods"))
		}
	}
	for _, p := range slices.Backward(s.Procs) {
		if strings.Contains(p.Name, "/") && !isKind(p, "kubelet") {
			stop(p, 5*time.Second)
		}
	}
	if cp != nil {
		keep(cp.Stop())
	}
	for _, p := range slices.Backward(s.Procs) {
		if !strings.Contains(p.Name, "/") {
			stop(p, 10*time.Second)
		}
	}
	// Whatever is left in the lab's namespaces (containerd shims, helpers)
	// is the lab's.
	var netIDs, mntIDs []nsID
	for _, n := range s.Netns {
		if id, err := nsOf("/run/netns/" + n); err == nil {
			netIDs = append(netIDs, id)
		}
	}
	for _, n := range s.Nodes {
		if id, err := nsOf(n.MountNS); err == nil && isMountPoint(n.MountNS) {
			mntIDs = append(mntIDs, id)
		}
	}
	rest := append(pidsInNamespaces("net", netIDs), pidsInNamespaces("mnt", mntIDs)...)
	if len(rest) > 0 {
		say("killing %d remaining process(es) in the lab's namespaces", len(rest))
		keep(killAll(rest, "lab namespace"))
	}
	say("processes stopped")

	// Routes, newest first (a namespace that is gone took its routes).
	for _, r := range slices.Backward(s.Routes) {
		if _, err := os.Stat("/run/netns/" + r.Netns); err != nil {
			continue
		}
		if routeExists(r) {
			if _, err := run("ip", "-n", r.Netns, "route", "del", r.Dst, "via", r.Via); err != nil {
				keep(err)
			}
		}
	}
	// Mounts, newest first.
	for _, m := range slices.Backward(s.Mounts) {
		keep(unmountAll(m))
	}
	// Namespaces (their veths and the fabric's bridge go with them).
	for _, n := range slices.Backward(s.Netns) {
		if _, err := os.Stat("/run/netns/" + n); err == nil {
			if _, err := run("ip", "netns", "del", n); err != nil {
				keep(err)
			}
		}
	}
	// Cgroups (the v2 ones through /sys/fs/cgroup/unified when our own
	// mount is gone already).
	for _, c := range slices.Backward(s.Cgroups) {
		if s.CgroupV2Mount != "" && strings.HasPrefix(c, s.CgroupV2Mount+"/") {
			c = filepath.Join("/sys/fs/cgroup/unified", strings.TrimPrefix(c, s.CgroupV2Mount+"/"))
		}
		keep(removeCgroupTree(c))
	}
	for _, sc := range slices.Backward(s.Sysctls) {
		keep(restoreSysctl(sc))
	}
	if len(errs) > 0 {
		return fmt.Errorf("lab down incomplete (run it again; state kept in %s): %w", s.Dir, errors.Join(errs...))
	}
	// Directories: refuse to remove anything while a mount remains below
	// (removing files in a still-mounted cgroup2 or bpffs would touch what is
	// not ours).
	if m := mountsBelow(s.Dir); len(m) > 0 {
		return fmt.Errorf("lab down: still mounted under %s: %v", s.Dir, m)
	}
	// Bind-mount targets the lab made (/var/lib/kubelet, ...), unless
	// another lab's node has a mount on one: removing it would detach that.
	for _, d := range slices.Backward(s.HostDirs) {
		if mountedElsewhere(d) {
			say("note: left %s: another lab mounts on it", d)
			continue
		}
		if err := syscall.Rmdir(d); err != nil && !errors.Is(err, syscall.ENOENT) {
			say("note: left %s (%v)", d, err)
		}
	}
	if err := os.RemoveAll(s.Dir); err != nil {
		return err
	}
	say("lab down in %.1fs", time.Since(t0).Seconds())
	return nil
}

// routeExists tells whether r is in its namespace's main table.
func routeExists(r Route) bool {
	out, err := run("ip", "-n", r.Netns, "-4", "route", "show", "exact", r.Dst, "via", r.Via)
	return err == nil && out != ""
}

// mountsBelow lists the mount points at or under dir.
func mountsBelow(dir string) []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 {
			if mp := unescapeMount(f[4]); mp == dir || strings.HasPrefix(mp, dir+"/") {
				out = append(out, mp)
			}
		}
	}
	return out
}
