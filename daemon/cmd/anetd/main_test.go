package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
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
// created: here a --bpf-root that is not a bpffs and a CIDR that is not one.
func TestStartErrors(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (CI runs as root)")
	}
	bin := filepath.Join(t.TempDir(), "anetd")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	dir := t.TempDir()
	cases := map[string][]string{
		"is not on a bpf filesystem": {"--pod-cidr", "10.244.1.0/24", "--bpf-root", dir},
		"--pod-cidr":                 {"--pod-cidr", "10.244.1.0/33", "--bpf-root", dir},
		"at most /30":                {"--pod-cidr", "10.244.1.0/31", "--bpf-root", dir},
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
