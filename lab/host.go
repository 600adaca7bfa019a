//go:build linux

package lab

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// run runs a command and returns its trimmed stdout; the error carries
// stderr.
func run(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return strings.TrimSpace(out.String()), nil
}

// ensureRuntime installs containerd and runc from Debian when they are
// missing. The package enables a system containerd service; the lab runs
// its own containerd per node, so the system one is disabled, and stopped
// where systemd runs (disableSystemContainerd).
func ensureRuntime(say func(string, ...any)) error {
	missing := false
	for _, b := range []string{"containerd", "runc", "ctr", "containerd-shim-runc-v2"} {
		if _, err := exec.LookPath(b); err != nil {
			missing = true
		}
	}
	if !missing {
		return nil
	}
	say("installing containerd and runc from Debian (apt-get, first use only)")
	cmd := exec.Command("apt-get", "-o", "DPkg::Lock::Timeout=300", "install", "-y", "--no-install-recommends", "containerd", "runc")
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("apt-get install containerd runc: %w\n%s", err, out)
	}
	if _, err := exec.LookPath("systemctl"); err == nil {
		disableSystemContainerd(say, func(args ...string) error {
			_, err := run("systemctl", args...)
			return err
		}, systemdBooted())
	}
	return nil
}

// systemdBooted tells whether systemd runs as the init system (the test of
// sd_booted(3)).
func systemdBooted() bool {
	fi, err := os.Lstat("/run/systemd/system")
	return err == nil && fi.IsDir()
}

// disableSystemContainerd disables the system containerd service that
// Debian's package enables, and stops it where systemd runs, saying what
// happened. The two are separate calls: `systemctl disable --now` on a
// machine without systemd as PID 1 disables the unit (it only removes
// symlinks, which works offline, and prints "Removed ...") and then fails
// to stop it with exit status 1, which reads as if nothing worked.
func disableSystemContainerd(say func(string, ...any), systemctl func(args ...string) error, booted bool) {
	if err := systemctl("disable", "containerd"); err != nil {
		say("note: could not disable the system containerd service (the lab does not use it): %v", err)
	} else {
		say("disabled the system containerd service that the package enabled (the lab runs a containerd per node)")
	}
	if !booted {
		say("systemd is not the init system here: no system containerd runs, nothing to stop")
		return
	}
	if err := systemctl("stop", "containerd"); err != nil {
		say("note: could not stop the system containerd service: %v", err)
	} else {
		say("stopped the system containerd service")
	}
}

// sysctlPath maps fs.inotify.max_user_instances to its /proc/sys file.
func sysctlPath(key string) string {
	return filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
}

func readSysctl(key string) (string, error) {
	b, err := os.ReadFile(sysctlPath(key))
	return strings.TrimSpace(string(b)), err
}

func writeSysctl(key, v string) error {
	return os.WriteFile(sysctlPath(key), []byte(v), 0o644)
}

// raiseSysctl raises an integer sysctl of the machine to at least want,
// recording the old value first.
func (l *Lab) raiseSysctl(key string, want int) error {
	old, err := readSysctl(key)
	if err != nil {
		return err
	}
	cur, err := strconv.Atoi(old)
	if err != nil {
		return fmt.Errorf("sysctl %s: %w", key, err)
	}
	if cur >= want {
		return nil
	}
	nv := strconv.Itoa(want)
	if err := l.st.update(func(s *State) { s.Sysctls = append(s.Sysctls, Sysctl{Key: key, Old: old, New: nv}) }); err != nil {
		return err
	}
	l.say("sysctl %s %s -> %s (restored by down)", key, old, nv)
	return writeSysctl(key, nv)
}

// restoreSysctl puts back a value the lab raised, unless someone changed
// it since (another lab raising it further, an administrator).
func restoreSysctl(s Sysctl) error {
	cur, err := readSysctl(s.Key)
	if err != nil {
		return err
	}
	if cur != s.New {
		return nil
	}
	return writeSysctl(s.Key, s.Old)
}

// cgroupV1Roots lists the mounted cgroup v1 hierarchies under
// /sys/fs/cgroup (cpu, cpuset, memory, ..., the named systemd one).
func cgroupV1Roots() ([]string, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var out []string
	seen := map[string]bool{} // hierarchy (device and root): one mount point each
	for _, line := range strings.Split(string(b), "\n") {
		// id parent major:minor root mountpoint ... - fstype source options
		i := strings.Index(line, " - ")
		if i < 0 {
			continue
		}
		f := strings.Fields(line[:i])
		tail := strings.Fields(line[i+3:])
		if len(f) < 5 || len(tail) < 1 || tail[0] != "cgroup" {
			continue
		}
		// A hierarchy mounted twice would make the lab's cgroup appear in
		// the second place at once, and makeCgroup refuses one that exists.
		if mp := f[4]; strings.HasPrefix(mp, "/sys/fs/cgroup/") && !seen[f[2]+" "+f[3]] {
			seen[f[2]+" "+f[3]] = true
			out = append(out, mp)
		}
	}
	return out, nil
}

// makeCgroup makes a cgroup directory, recording it first. One that exists
// already is not the lab's (another lab of the same name, or one left by a
// crash that was never taken down): the record is dropped and the error
// says so, since the failure path of Up removes what is recorded. In the
// cpuset hierarchy a new cgroup has no CPUs and no memory nodes until they
// are copied from its parent.
func (l *Lab) makeCgroup(dir string) error {
	if err := l.st.update(func(s *State) { s.Cgroups = append(s.Cgroups, dir) }); err != nil {
		return err
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		if uerr := l.st.update(func(s *State) { s.Cgroups = slices.DeleteFunc(s.Cgroups, func(c string) bool { return c == dir }) }); uerr != nil {
			err = errors.Join(err, uerr)
		}
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("cgroup %s exists already (another lab named %q, or one never taken down? pick another --name): %w", dir, l.Name, err)
		}
		return err
	}
	for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
		v, err := os.ReadFile(filepath.Join(filepath.Dir(dir), f))
		if err != nil {
			continue // not the cpuset hierarchy
		}
		if err := os.WriteFile(filepath.Join(dir, f), v, 0o644); err != nil {
			return fmt.Errorf("copying %s into %s: %w", f, dir, err)
		}
	}
	return nil
}

// removeCgroupTree removes a cgroup directory and every cgroup below it,
// deepest first, after killing what is still inside. Directories vanish
// only once their last process has fully exited, hence the retries.
func removeCgroupTree(dir string) error {
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if pids := pidsInCgroup(dir); len(pids) > 0 {
		if err := killAll(pids, "cgroup "+dir); err != nil {
			return err
		}
	}
	var dirs []string
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	var last error
	for i := len(dirs) - 1; i >= 0; i-- {
		deadline := time.Now().Add(10 * time.Second)
		for {
			err := syscall.Rmdir(dirs[i])
			if err == nil || errors.Is(err, syscall.ENOENT) {
				last = nil
				break
			}
			last = fmt.Errorf("removing cgroup %s: %w", dirs[i], err)
			if time.Now().After(deadline) {
				return last
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return last
}

// mount runs mount(2), recording the mount point first so that a crash
// right after still gets it unmounted.
func (l *Lab) mount(source, target, fstype string, flags uintptr, data string) error {
	if err := l.st.update(func(s *State) { s.Mounts = append(s.Mounts, target) }); err != nil {
		return err
	}
	if err := syscall.Mount(source, target, fstype, flags, data); err != nil {
		return fmt.Errorf("mounting %s on %s: %w", fstype, target, err)
	}
	return nil
}

// unmountAll unmounts everything mounted at target (mounts stack), lazily
// when busy. Not mounted is fine.
func unmountAll(target string) error {
	for range 16 {
		if !isMountPoint(target) {
			return nil
		}
		err := syscall.Unmount(target, 0)
		if err != nil {
			err = syscall.Unmount(target, syscall.MNT_DETACH)
		}
		if err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
			return fmt.Errorf("unmounting %s: %w", target, err)
		}
	}
	return nil
}

// isMountPoint tells whether path is a mount point of this mount namespace.
func isMountPoint(path string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && unescapeMount(f[4]) == path {
			return true
		}
	}
	return false
}

// unescapeMount undoes the octal escapes of /proc/self/mountinfo.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
