//go:build linux

package lab

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// procStart returns the start time of a process (field 22 of
// /proc/PID/stat, clock ticks since boot) and whether it is a zombie.
func procStart(pid int) (start uint64, zombie bool, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, false, err
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, false, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:]) // f[0] is field 3 (state)
	if len(f) < 20 {
		return 0, false, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	start, err = strconv.ParseUint(f[19], 10, 64)
	return start, f[0] == "Z", err
}

func procExe(pid int) string {
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return ""
	}
	return strings.TrimSuffix(exe, " (deleted)")
}

// alive tells whether p still runs: same PID, same executable, same start
// time, and not a zombie.
func (p Proc) alive() bool {
	if p.PID <= 0 {
		return false
	}
	start, zombie, err := procStart(p.PID)
	if err != nil || zombie || start != p.Start {
		return false
	}
	return procExe(p.PID) == p.Exe
}

// stop sends SIGTERM to p, then SIGKILL after grace, and waits for it to
// be gone. A process that is no longer p is left alone.
func (p Proc) stop(grace time.Duration) error {
	if !p.alive() {
		return nil
	}
	_ = syscall.Kill(p.PID, syscall.SIGTERM)
	if waitGone(p, grace) {
		return nil
	}
	if p.alive() {
		_ = syscall.Kill(p.PID, syscall.SIGKILL)
	}
	if waitGone(p, 10*time.Second) {
		return nil
	}
	return fmt.Errorf("%s (pid %d) survived SIGKILL", p.Name, p.PID)
}

func waitGone(p Proc, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		if !p.alive() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// identify makes a Proc record for a running PID.
func identify(name string, pid int, log string) (Proc, error) {
	start, _, err := procStart(pid)
	if err != nil {
		return Proc{}, err
	}
	return Proc{Name: name, PID: pid, Exe: procExe(pid), Start: start, Log: log}, nil
}

// spawn starts argv through nsenter (into the given network namespace and,
// when mntns is not empty, mount namespace) in a session of its own, so that
// it outlives the anet-lab command that started it, with its output
// appended to logPath. nsenter execs argv[0] in place, so the PID is the
// program's; spawn waits for that exec before it returns the record.
func spawn(name, netnsPath, mntns, logPath string, argv ...string) (Proc, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return Proc{}, err
	}
	defer logf.Close()
	fmt.Fprintf(logf, "==== %s starting: %s\n", time.Now().Format(time.RFC3339), strings.Join(argv, " "))
	args := []string{"--net=" + netnsPath}
	if mntns != "" {
		args = append(args, "--mount="+mntns)
	}
	args = append(args, "--")
	args = append(args, argv...)
	cmd := exec.Command("nsenter", args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = "/"
	// iptables-legacy (anetd looks for a legacy kube-proxy's rules with
	// it) takes its lock at /run/xtables.lock, a file of the machine:
	// the lab's processes use one in the lab's directory instead.
	cmd.Env = append(os.Environ(), "XTABLES_LOCKFILE="+filepath.Join(filepath.Dir(filepath.Dir(logPath)), "xtables.lock"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return Proc{}, fmt.Errorf("starting %s: %w", name, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }() // reaps it when it dies while we live
	want, err := filepath.EvalSymlinks(argv[0])
	if err != nil {
		want = argv[0]
	}
	pid := cmd.Process.Pid
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case <-done:
			return Proc{}, fmt.Errorf("%s exited at once:\n%s", name, tail(logPath, 20))
		default:
		}
		if procExe(pid) == want {
			p, err := identify(name, pid, logPath)
			p.Argv, p.Netns, p.MountNS = argv, netnsPath, mntns
			return p, err
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			return Proc{}, fmt.Errorf("%s: nsenter did not exec %s within 10s", name, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// nsID is the identity (device and inode) of a namespace file.
type nsID struct{ dev, ino uint64 }

func nsOf(path string) (nsID, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return nsID{}, err
	}
	return nsID{uint64(st.Dev), st.Ino}, nil
}

// pidsInNamespaces lists the processes whose namespace of the given kind
// ("net" or "mnt") is one of ids. Those namespaces are the lab's own, so
// every process in them is the lab's (shims, helpers, anything the recorded
// processes started).
func pidsInNamespaces(kind string, ids []nsID) []int {
	if len(ids) == 0 {
		return nil
	}
	es, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	self := os.Getpid()
	var out []int
	for _, e := range es {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		id, err := nsOf(fmt.Sprintf("/proc/%d/ns/%s", pid, kind))
		if err != nil {
			continue
		}
		for _, want := range ids {
			if id == want {
				out = append(out, pid)
				break
			}
		}
	}
	return out
}

// pidsInCgroup lists the processes in a cgroup directory and below.
func pidsInCgroup(dir string) []int {
	var out []int
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != "cgroup.procs" {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil
		}
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
				out = append(out, pid)
			}
		}
		return nil
	})
	return out
}

// killAll sends SIGKILL to each PID (identified first, so that a PID reused
// between listing and signalling is not hit) and waits for them to go.
func killAll(pids []int, what string) error {
	var recs []Proc
	for _, pid := range pids {
		if p, err := identify(what, pid, ""); err == nil {
			recs = append(recs, p)
		}
	}
	for _, p := range recs {
		if p.alive() {
			_ = syscall.Kill(p.PID, syscall.SIGKILL)
		}
	}
	var errs []error
	for _, p := range recs {
		if !waitGone(p, 10*time.Second) {
			errs = append(errs, fmt.Errorf("%s process %d survived SIGKILL", what, p.PID))
		}
	}
	return errors.Join(errs...)
}
