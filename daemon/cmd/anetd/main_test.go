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
		args = append(args, "--health-addr", "", "--state-dir", filepath.Join(dir, "state"), "--socket", filepath.Join(dir, "s.sock"))
		out, err := exec.Command(bin, args...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), want) {
			t.Errorf("%v: exit %v, output %q; want an error saying %q", args, err, out, want)
		}
		if _, err := os.Stat(filepath.Join(dir, "s.sock")); err == nil {
			t.Errorf("%v: socket left behind", args)
		}
	}
}
