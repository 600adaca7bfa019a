//go:build linux

package lab

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// cgroupDirs lists the cgroup directories at and under dir.
func cgroupDirs(dir string) []string {
	var out []string
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			out = append(out, p)
		}
		return nil
	})
	return out
}

// TestExecInPodCgroup: Exec runs its command in the pod's network namespace
// and in its container's cgroup v2, where the node's socket-level hooks
// see it (issue 8), as `kubectl exec` does; afterwards neither a process
// nor a cgroup of it is left.
func TestExecInPodCgroup(t *testing.T) {
	l := SharedLab(t)
	s := l.State()
	p := testPod(t, l, "exec-cgroup", NodeName(1))
	n, _ := l.Node(p.Node)
	cg, err := l.PodCgroup("default", p.Name)
	if err != nil {
		t.Fatal(err)
	}
	rel, ok := strings.CutPrefix(cg, s.CgroupV2Mount)
	if !ok || !strings.HasPrefix(rel, "/"+n.CgroupName+"/kubepods/") {
		t.Fatalf("the pod's cgroup %s is not under the node's subtree %s/%s/kubepods", cg, s.CgroupV2Mount, n.CgroupName)
	}
	netns, err := l.PodNetns("default", p.Name)
	if err != nil {
		t.Fatal(err)
	}
	podNet, err := os.Readlink(netns)
	if err != nil {
		t.Fatal(err)
	}
	nodeTree := filepath.Join(s.CgroupV2Mount, n.CgroupName)
	dirsBefore := cgroupDirs(nodeTree)
	procsBefore := pidsInCgroup(cg)

	// sh (the machine's) prints its PID, the cgroup v2 line of a child's
	// /proc/self/cgroup, and its network namespace.
	out, err := l.Exec("default", p.Name, "sh", "-c", "echo $$; grep '^0::' /proc/self/cgroup; readlink /proc/self/ns/net")
	if err != nil {
		t.Fatalf("exec: %v: %s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 {
		t.Fatalf("exec printed %q", out)
	}
	pid, err := strconv.Atoi(lines[0])
	if err != nil {
		t.Fatalf("exec printed %q", out)
	}
	if lines[1] != "0::"+rel {
		t.Errorf("the exec'd process's cgroup v2 is %q, want the pod container's 0::%s", lines[1], rel)
	}
	if lines[2] != podNet {
		t.Errorf("the exec'd process's network namespace is %s, want the pod's %s", lines[2], podNet)
	}

	// Nothing left: the process is gone, the container's cgroup holds what
	// it held, and no cgroup was made or removed.
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid)); err == nil && strings.Contains(string(b), rel) {
		t.Errorf("process %d is still in %s", pid, rel)
	}
	if after := pidsInCgroup(cg); !slices.Equal(after, procsBefore) {
		t.Errorf("the container's cgroup holds %v after the exec, %v before", after, procsBefore)
	}
	if after := cgroupDirs(nodeTree); !slices.Equal(after, dirsBefore) {
		t.Errorf("the node's cgroup v2 subtree changed: %d directories before, %d after", len(dirsBefore), len(after))
	}

	// ExecCmd, as `anet-lab exec` runs it: a command still running is in
	// the cgroup too, and goes when it is ended.
	cmd, err := l.ExecCmd("default", p.Name, "sleep", "60")
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(pidsInCgroup(cg), cmd.Process.Pid) {
		t.Errorf("a running exec (pid %d) is not in %s: %v", cmd.Process.Pid, cg, pidsInCgroup(cg))
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	if slices.Contains(pidsInCgroup(cg), cmd.Process.Pid) {
		t.Errorf("the ended exec (pid %d) is still in %s", cmd.Process.Pid, cg)
	}
}
