package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRun(t *testing.T) {
	d := t.TempDir()
	src := filepath.Join(d, "anet-cni")
	if err := os.WriteFile(src, []byte("plugin"), 0o755); err != nil {
		t.Fatal(err)
	}
	args := []string{"--cni-bin-dir", filepath.Join(d, "bin"), "--cni-conf-dir", filepath.Join(d, "net.d"),
		"--source-bin", src, "--socket", "/run/x/anetd.sock", "--bpf-root", "/sys/fs/bpf/x", "--mtu", "1400"}
	var out, errb bytes.Buffer
	if code := run(args, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	if strings.Count(out.String(), "installed ") != 2 {
		t.Errorf("first run output:\n%s", out.String())
	}
	conf, err := os.ReadFile(filepath.Join(d, "net.d", "10-anet.conflist"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"socket": "/run/x/anetd.sock"`, `"bpfRoot": "/sys/fs/bpf/x"`, `"mtu": 1400`} {
		if !strings.Contains(string(conf), want) {
			t.Errorf("conflist lacks %s:\n%s", want, conf)
		}
	}
	out.Reset()
	if code := run(args, &out, &errb); code != 0 {
		t.Fatalf("second run exit %d: %s", code, errb.String())
	}
	if strings.Count(out.String(), "unchanged ") != 2 {
		t.Errorf("second run output:\n%s", out.String())
	}
}

func TestRunErrors(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"--bogus"}, &out, &errb); code != 2 {
		t.Errorf("bad flag: exit %d", code)
	}
	if code := run([]string{"extra"}, &out, &errb); code != 2 {
		t.Errorf("extra argument: exit %d", code)
	}
	d := t.TempDir()
	code := run([]string{"--cni-bin-dir", d, "--cni-conf-dir", d, "--source-bin", filepath.Join(d, "missing")}, &out, &errb)
	if code != 1 || !strings.Contains(errb.String(), "source binary") {
		t.Errorf("missing source: exit %d, %s", code, errb.String())
	}
}
