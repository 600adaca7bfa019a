//go:build linux

package lab

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Leftovers lists what of the lab recorded in s is still on the machine:
// network namespaces, mounts, processes (recorded ones, and any whose
// command line names the lab's directory), cgroups, raised sysctls and
// directories. It is empty after a complete down.
func Leftovers(s *State) []string {
	var out []string
	// A check that cannot look is a leftover too: a state that records
	// nothing (say, read with a renamed layout) or a directory that cannot
	// be read must not pass for a clean machine.
	cannot := func(what string, err error) { out = append(out, fmt.Sprintf("cannot check %s: %v", what, err)) }
	// exists: present, or an error other than "does not exist".
	exists := func(what, p string) bool {
		_, err := os.Lstat(p)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			cannot(what+" "+p, err)
			return false
		}
		return err == nil
	}
	if s.Name == "" || s.Dir == "" {
		cannot("the lab", errors.New("the state records no lab name or directory"))
	}
	for _, n := range s.Netns {
		if exists("netns", "/run/netns/"+n) {
			out = append(out, "netns "+n)
		}
	}
	mounts, err := mountPoints()
	if err != nil {
		cannot("mounts", err)
	}
	for _, m := range s.Mounts {
		if mounts[m] {
			out = append(out, "mount "+m)
		}
	}
	for _, m := range mountsBelow(s.Dir) {
		out = append(out, "mount "+m)
	}
	for _, r := range s.Routes {
		if exists("netns", "/run/netns/"+r.Netns) && routeExists(r) {
			out = append(out, fmt.Sprintf("route %s via %s in %s", r.Dst, r.Via, r.Netns))
		}
	}
	for _, p := range s.Procs {
		if p.alive() {
			out = append(out, fmt.Sprintf("process %s (pid %d)", p.Name, p.PID))
		}
	}
	pids, err := pidsNaming(s.Dir + "/")
	if err != nil {
		cannot("processes", err)
	}
	for _, pid := range pids {
		out = append(out, fmt.Sprintf("process %d naming %s", pid, s.Dir))
	}
	for _, c := range s.Cgroups {
		if s.CgroupV2Mount != "" && strings.HasPrefix(c, s.CgroupV2Mount+"/") {
			c = filepath.Join("/sys/fs/cgroup/unified", strings.TrimPrefix(c, s.CgroupV2Mount+"/"))
		}
		if exists("cgroup", c) {
			out = append(out, "cgroup "+c)
		}
	}
	for _, sc := range s.Sysctls {
		v, err := readSysctl(sc.Key)
		if err != nil {
			cannot("sysctl "+sc.Key, err)
		} else if v == sc.New && sc.New != sc.Old {
			out = append(out, fmt.Sprintf("sysctl %s = %s (was %s)", sc.Key, v, sc.Old))
		}
	}
	for _, d := range s.HostDirs {
		if exists("directory", d) && !mountedElsewhere(d) {
			out = append(out, "directory "+d)
		}
	}
	if s.Dir != "" && exists("directory", s.Dir) {
		out = append(out, "directory "+s.Dir)
	}
	return out
}

// mountPoints is the set of mount points of this mount namespace.
func mountPoints() (map[string]bool, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 {
			out[unescapeMount(f[4])] = true
		}
	}
	return out, nil
}

// pidsNaming lists the processes whose command line contains s.
func pidsNaming(s string) ([]int, error) {
	es, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var out []int
	for _, e := range es {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err == nil && strings.Contains(string(b), s) {
			if _, zombie, err := procStart(pid); err == nil && !zombie {
				out = append(out, pid)
			}
		}
	}
	return out, nil
}

// mountedElsewhere tells whether path is a mount point in any mount
// namespace of the machine (another lab's node uses it as a bind-mount
// target: removing the directory would detach that lab's mount).
func mountedElsewhere(path string) bool {
	es, _ := os.ReadDir("/proc")
	seen := map[nsID]bool{}
	for _, e := range es {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		id, err := nsOf("/proc/" + e.Name() + "/ns/mnt")
		if err != nil || seen[id] {
			continue
		}
		seen[id] = true
		b, err := os.ReadFile("/proc/" + e.Name() + "/mountinfo")
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) > 4 && unescapeMount(f[4]) == path {
				return true
			}
		}
	}
	return false
}
