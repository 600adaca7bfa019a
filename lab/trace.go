//go:build linux

package lab

import (
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
	for _, n := range s.Netns {
		if _, err := os.Stat("/run/netns/" + n); err == nil {
			out = append(out, "netns "+n)
		}
	}
	for _, m := range s.Mounts {
		if isMountPoint(m) {
			out = append(out, "mount "+m)
		}
	}
	for _, m := range mountsBelow(s.Dir) {
		out = append(out, "mount "+m)
	}
	for _, p := range s.Procs {
		if p.alive() {
			out = append(out, fmt.Sprintf("process %s (pid %d)", p.Name, p.PID))
		}
	}
	for _, pid := range pidsNaming(s.Dir + "/") {
		out = append(out, fmt.Sprintf("process %d naming %s", pid, s.Dir))
	}
	for _, c := range s.Cgroups {
		if s.CgroupV2Mount != "" && strings.HasPrefix(c, s.CgroupV2Mount+"/") {
			c = filepath.Join("/sys/fs/cgroup/unified", strings.TrimPrefix(c, s.CgroupV2Mount+"/"))
		}
		if _, err := os.Stat(c); err == nil {
			out = append(out, "cgroup "+c)
		}
	}
	for _, sc := range s.Sysctls {
		if v, err := readSysctl(sc.Key); err == nil && v == sc.New && sc.New != sc.Old {
			out = append(out, fmt.Sprintf("sysctl %s = %s (was %s)", sc.Key, v, sc.Old))
		}
	}
	for _, d := range s.HostDirs {
		if _, err := os.Stat(d); err == nil && !mountedElsewhere(d) {
			out = append(out, "directory "+d)
		}
	}
	if _, err := os.Stat(s.Dir); err == nil {
		out = append(out, "directory "+s.Dir)
	}
	return out
}

// pidsNaming lists the processes whose command line contains s.
func pidsNaming(s string) []int {
	es, _ := os.ReadDir("/proc")
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
	return out
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
