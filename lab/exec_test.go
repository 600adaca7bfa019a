//go:build linux

package lab

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
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
// and in its container's cgroup v2, as `kubectl exec` does, so that a
// cgroup/connect4 program at the node's subtree (where anetd's socket-level
// service hooks go, issue 8) sees its connect() calls; afterwards neither a
// process nor a cgroup of it is left.
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

	// What it is for: a cgroup/connect4 program attached at the node's
	// subtree, where anetd attaches its socket-level hooks, sees the
	// exec'd process's connect() as it sees the container's own, and not
	// that of a process that only entered the pod's network namespace.
	count := connectCounter(t, nodeTree, hookPort)
	probe := filepath.Join(l.opts.ImageDir, "bin", "anet-testserver")
	dst := fmt.Sprintf("%s:%d", p.IP, hookPort) // nothing listens: refused at once
	args := []string{"connect", "--protocol", "tcp", "--address", dst, "--timeout", "2s"}
	for _, step := range []struct {
		what string
		run  func() error
		want uint64
	}{
		{"kubectl exec (the container's own process)", func() error {
			_, err := l.Kubectl(append([]string{"exec", p.Name, "--", "/anet-testserver"}, args...)...)
			return err
		}, 1},
		{"Exec", func() error { _, err := l.Exec("default", p.Name, append([]string{probe}, args...)...); return err }, 2},
		{"nsenter into the pod's network namespace only", func() error {
			return exec.Command("nsenter", append([]string{"--net=" + netns, "--", probe}, args...)...).Run()
		}, 2},
	} {
		if err := step.run(); err == nil {
			t.Errorf("%s: connect to %s succeeded; nothing listens there", step.what, dst)
		}
		if got := count(); got != step.want {
			t.Errorf("after %s: the node's connect4 hook counted %d connect(s) to port %d, want %d", step.what, got, hookPort, step.want)
		}
	}
}

// hookPort is the port whose connects connectCounter counts: one nothing
// in the lab uses.
const hookPort = 18080

// connectCounter attaches, at the cgroup v2 directory cg, a cgroup/connect4
// program that counts the connect() calls to port (any address) made by
// the processes of cg's subtree and lets every one through; it returns the
// reader of the count. Program, map and link go at the end of the test.
func connectCounter(t *testing.T, cg string, port uint16) func() uint64 {
	t.Helper()
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	// struct bpf_sock_addr: user_port (network byte order) at offset 24.
	nport := int32(port>>8 | (port&0xff)<<8)
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:       ebpf.CGroupSockAddr,
		AttachType: ebpf.AttachCGroupInet4Connect,
		License:    "GPL",
		Instructions: asm.Instructions{
			asm.LoadMem(asm.R2, asm.R1, 24, asm.Word),
			asm.JNE.Imm(asm.R2, nport, "allow"),
			asm.StoreImm(asm.RFP, -4, 0, asm.Word),
			asm.LoadMapPtr(asm.R1, m.FD()),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, -4),
			asm.FnMapLookupElem.Call(),
			asm.JEq.Imm(asm.R0, 0, "allow"),
			asm.Mov.Imm(asm.R1, 1),
			asm.StoreXAdd(asm.R0, asm.R1, asm.DWord),
			asm.Mov.Imm(asm.R0, 1).WithSymbol("allow"),
			asm.Return(),
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { prog.Close() })
	lk, err := link.AttachCgroup(link.CgroupOptions{Path: cg, Attach: ebpf.AttachCGroupInet4Connect, Program: prog})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lk.Close() })
	return func() uint64 {
		var v uint64
		if err := m.Lookup(uint32(0), &v); err != nil {
			t.Fatal(err)
		}
		return v
	}
}
