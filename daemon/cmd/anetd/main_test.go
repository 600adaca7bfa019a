package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestParseFlagsErrors(t *testing.T) {
	cases := map[string][]string{
		"--pod-cidr is required":     {"--node-name", "n"},
		"must be an absolute path":   {"--pod-cidr", "10.0.0.0/24", "--bpf-root", "rel/path"},
		"unexpected arguments":       {"--pod-cidr", "10.0.0.0/24", "extra"},
		"flag provided but not defi": {"--no-such-flag"},
	}
	for want, args := range cases {
		_, err := parseFlags(args)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%v: got %v, want %q", args, err, want)
		}
	}
}

// A bad start is a clear error and a non-zero exit, before anything is
// created: here a --bpf-root where no bpffs can be mounted (a regular file)
// and a CIDR that is not one. (A --bpf-root that is a plain directory gets
// a bpffs mounted: TestAnetdMountsBPFFS.)
func TestStartErrors(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (CI runs as root)")
	}
	bin := filepath.Join(t.TempDir(), "anetd")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "not-a-dir")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	bpfRoot := filepath.Join(dir, "bpf")
	t.Cleanup(func() { _ = unix.Unmount(bpfRoot, unix.MNT_DETACH) })
	cases := map[string][]string{
		"creating bpf root": {"--pod-cidr", "10.244.1.0/24", "--bpf-root", filepath.Join(file, "bpf")},
		"--pod-cidr":        {"--pod-cidr", "10.244.1.0/33", "--bpf-root", bpfRoot},
		"at most /30":       {"--pod-cidr", "10.244.1.0/31", "--bpf-root", bpfRoot},
	}
	for want, args := range cases {
		args = append(args, "--health-addr", "", "--metrics-addr", "", "--state-dir", filepath.Join(dir, "state"), "--socket", filepath.Join(dir, "s.sock"))
		out, err := exec.Command(bin, args...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), want) {
			t.Errorf("%v: exit %v, output %q; want an error saying %q", args, err, out, want)
		}
		if _, err := os.Stat(filepath.Join(dir, "s.sock")); err == nil {
			t.Errorf("%v: socket left behind", args)
		}
	}
}

func TestParseServiceFlags(t *testing.T) {
	c, err := parseFlags([]string{"--pod-cidr", "10.0.0.0/24"})
	if err != nil {
		t.Fatal(err)
	}
	if !c.enableServices || c.cgroupRoot != "/sys/fs/cgroup" || c.healthzAddr != "0.0.0.0:10256" ||
		c.lbServicesMax != 327680 || c.lbBackendsMax != 262144 || c.metricsAddr != ":9090" {
		t.Errorf("defaults: %+v", c)
	}
	c, err = parseFlags([]string{"--pod-cidr", "10.0.0.0/24", "--enable-services=false", "--cgroup-root", "/mnt/cg/node1",
		"--healthz-bind-address", "", "--lb-services-max", "65536", "--lb-backends-max", "1000", "--metrics-addr", ""})
	if err != nil {
		t.Fatal(err)
	}
	if c.enableServices || c.cgroupRoot != "/mnt/cg/node1" || c.healthzAddr != "" || c.lbServicesMax != 65536 || c.lbBackendsMax != 1000 || c.metricsAddr != "" {
		t.Errorf("parsed: %+v", c)
	}
	for want, args := range map[string][]string{
		"--lb-services-max must be": {"--lb-services-max", "0"},
		"--lb-backends-max must be": {"--lb-backends-max", "99999999"},
		"--cgroup-root must be an":  {"--cgroup-root", "sys/fs/cgroup"},
	} {
		if _, err := parseFlags(append([]string{"--pod-cidr", "10.0.0.0/24"}, args...)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%v: %v, want %q", args, err, want)
		}
	}
}

// TestResolveCgroupRoot: a cgroup v2 mount is taken as it is (and a
// directory below it); a v1 layout (a tmpfs) with a v2 unified/ below it
// gives unified/; anything else is an error.
func TestResolveCgroupRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (mounts); CI runs as root")
	}
	dir := t.TempDir()
	v2 := filepath.Join(dir, "v2")
	v1 := filepath.Join(dir, "v1")
	for _, d := range []string{v2, v1} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// Private mounts, detached at the end, in the test's own directory.
	if err := unix.Mount("none", v2, "cgroup2", 0, ""); err != nil {
		t.Fatalf("mounting cgroup2: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(v2, unix.MNT_DETACH) })
	if err := unix.Mount("tmpfs", v1, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(v1, unix.MNT_DETACH) })
	unified := filepath.Join(v1, "unified")
	if err := os.Mkdir(unified, 0o755); err != nil {
		t.Fatal(err)
	}
	if got, err := resolveCgroupRoot(v2); err != nil || got != v2 {
		t.Errorf("v2 mount: %q %v", got, err)
	}
	if _, err := resolveCgroupRoot(v1); err == nil || !strings.Contains(err.Error(), "not in a cgroup v2 hierarchy") {
		t.Errorf("v1 layout without unified: %v", err)
	}
	if err := unix.Mount("none", unified, "cgroup2", 0, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(unified, unix.MNT_DETACH) })
	if got, err := resolveCgroupRoot(v1); err != nil || got != unified {
		t.Errorf("v1 layout with unified: %q %v", got, err)
	}
	if _, err := resolveCgroupRoot(filepath.Join(dir, "missing")); err == nil {
		t.Error("a missing path accepted")
	}
}
