package installer

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/anet-dev/anet/cniconf"
)

func fakeBinary(t *testing.T, dir string, content string) string {
	t.Helper()
	p := filepath.Join(dir, "src-anet-cni")
	if err := os.WriteFile(p, []byte(content), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func opts(t *testing.T) Options {
	d := t.TempDir()
	return Options{
		CNIBinDir:  filepath.Join(d, "opt", "cni", "bin"),
		CNIConfDir: filepath.Join(d, "etc", "cni", "net.d"),
		SourceBin:  fakeBinary(t, d, "#!/bin/true\nversion 1\n"),
		Socket:     "/run/anet-test/anetd.sock",
		BPFRoot:    "/sys/fs/bpf/anet-test",
		MTU:        1450,
	}
}

func TestInstallFresh(t *testing.T) {
	o := opts(t)
	r, err := Install(o)
	if err != nil {
		t.Fatal(err)
	}
	if !r.BinaryChanged || !r.ConflistChanged {
		t.Fatalf("fresh install reported no change: %+v", r)
	}
	if r.BinaryPath != filepath.Join(o.CNIBinDir, "anet-cni") {
		t.Errorf("binary at %s", r.BinaryPath)
	}
	got, _ := os.ReadFile(r.BinaryPath)
	want, _ := os.ReadFile(o.SourceBin)
	if !bytes.Equal(got, want) {
		t.Errorf("binary content differs")
	}
	if st, _ := os.Stat(r.BinaryPath); st.Mode().Perm() != 0o755 {
		t.Errorf("binary mode %v, want 0755", st.Mode().Perm())
	}
	if st, _ := os.Stat(r.ConflistPath); st.Mode().Perm() != 0o644 {
		t.Errorf("conflist mode %v, want 0644", st.Mode().Perm())
	}

	// The conflist is what libcni loads from the conf dir, and carries the
	// node's values.
	list, err := libcni.LoadConfList(o.CNIConfDir, "anet")
	if err != nil {
		t.Fatalf("libcni cannot load the conflist: %v", err)
	}
	if len(list.Plugins) != 1 {
		t.Fatalf("%d plugins, want 1", len(list.Plugins))
	}
	conf, err := cniconf.Parse(withListFields(t, list))
	if err != nil {
		t.Fatal(err)
	}
	if conf.Socket != o.Socket || conf.BPFRoot != o.BPFRoot || conf.MTU != o.MTU || conf.Type != cniconf.PluginType {
		t.Errorf("conflist values: %+v", conf)
	}
	assertNoTemps(t, o)
}

// withListFields is the plugin entry as libcni hands it to the plugin.
func withListFields(t *testing.T, list *libcni.NetworkConfigList) []byte {
	t.Helper()
	c, err := libcni.InjectConf(list.Plugins[0], map[string]interface{}{"cniVersion": list.CNIVersion, "name": list.Name})
	if err != nil {
		t.Fatal(err)
	}
	return c.Bytes
}

func assertNoTemps(t *testing.T, o Options) {
	t.Helper()
	for _, d := range []string{o.CNIBinDir, o.CNIConfDir} {
		es, err := os.ReadDir(d)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range es {
			if e.Name() != "anet-cni" && e.Name() != ConflistName {
				t.Errorf("left behind in %s: %s", d, e.Name())
			}
		}
	}
}

func TestInstallIdempotent(t *testing.T) {
	o := opts(t)
	r1, err := Install(o)
	if err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Hour).Truncate(time.Second)
	for _, p := range []string{r1.BinaryPath, r1.ConflistPath} {
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
	}
	r2, err := Install(o)
	if err != nil {
		t.Fatal(err)
	}
	if r2.BinaryChanged || r2.ConflistChanged {
		t.Fatalf("second install changed something: %+v", r2)
	}
	for _, p := range []string{r2.BinaryPath, r2.ConflistPath} {
		st, _ := os.Stat(p)
		if !st.ModTime().Equal(old) {
			t.Errorf("%s was rewritten (mtime %v)", p, st.ModTime())
		}
	}
	assertNoTemps(t, o)
}

func TestInstallReplaces(t *testing.T) {
	o := opts(t)
	r1, err := Install(o)
	if err != nil {
		t.Fatal(err)
	}
	// Keep an open handle on the old binary: an atomic replace gives the
	// path a new inode and leaves the old one intact for whoever runs it.
	oldF, err := os.Open(r1.BinaryPath)
	if err != nil {
		t.Fatal(err)
	}
	defer oldF.Close()
	oldSt, _ := oldF.Stat()

	if err := os.WriteFile(o.SourceBin, []byte("#!/bin/true\nversion 2, longer\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	o.MTU = 9000
	r2, err := Install(o)
	if err != nil {
		t.Fatal(err)
	}
	if !r2.BinaryChanged || !r2.ConflistChanged {
		t.Fatalf("changes not installed: %+v", r2)
	}
	got, _ := os.ReadFile(r2.BinaryPath)
	if string(got) != "#!/bin/true\nversion 2, longer\n" {
		t.Errorf("binary not replaced: %q", got)
	}
	newSt, _ := os.Stat(r2.BinaryPath)
	if os.SameFile(oldSt, newSt) {
		t.Error("binary rewritten in place, not replaced by rename")
	}
	oldContent := make([]byte, 64)
	n, _ := oldF.ReadAt(oldContent, 0)
	if string(oldContent[:n]) != "#!/bin/true\nversion 1\n" {
		t.Errorf("old inode changed: %q", oldContent[:n])
	}
	list, err := libcni.LoadConfList(o.CNIConfDir, "anet")
	if err != nil {
		t.Fatal(err)
	}
	conf, err := cniconf.Parse(withListFields(t, list))
	if err != nil {
		t.Fatal(err)
	}
	if conf.MTU != 9000 {
		t.Errorf("mtu %d, want 9000", conf.MTU)
	}

	// A wrong mode alone is repaired too.
	if err := os.Chmod(r2.BinaryPath, 0o600); err != nil {
		t.Fatal(err)
	}
	r3, err := Install(o)
	if err != nil {
		t.Fatal(err)
	}
	if !r3.BinaryChanged || r3.ConflistChanged {
		t.Errorf("mode repair: %+v", r3)
	}
	if st, _ := os.Stat(r3.BinaryPath); st.Mode().Perm() != 0o755 {
		t.Errorf("mode %v after repair", st.Mode().Perm())
	}
	assertNoTemps(t, o)
}

func TestInstallErrors(t *testing.T) {
	o := opts(t)

	missing := o
	missing.SourceBin = filepath.Join(t.TempDir(), "nope")
	if _, err := Install(missing); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing source: %v", err)
	}

	dir := o
	dir.SourceBin = t.TempDir()
	if _, err := Install(dir); err == nil {
		t.Error("a directory as source was accepted")
	}

	bad := o
	bad.Socket = "relative/anetd.sock"
	var ce *cniconf.ConfigError
	if _, err := Install(bad); !errors.As(err, &ce) {
		t.Errorf("relative socket: %v, want a *cniconf.ConfigError", err)
	}

	for _, o2 := range []Options{{CNIConfDir: "/x", SourceBin: "/y"}, {CNIBinDir: "/x", SourceBin: "/y"}, {CNIBinDir: "/x", CNIConfDir: "/y"}} {
		if _, err := Install(o2); err == nil {
			t.Errorf("%+v accepted", o2)
		}
	}
	// Nothing was written by the failed attempts.
	if _, err := os.Stat(o.CNIBinDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("bin dir made by a failed install: %v", err)
	}
}

func TestInstallCNIVersion(t *testing.T) {
	for _, v := range SupportedCNIVersions {
		o := opts(t)
		o.CNIVersion = v
		if _, err := Install(o); err != nil {
			t.Fatalf("%s: %v", v, err)
		}
		list, err := libcni.LoadConfList(o.CNIConfDir, "anet")
		if err != nil {
			t.Fatal(err)
		}
		if list.CNIVersion != v {
			t.Errorf("cniVersion %s, want %s", list.CNIVersion, v)
		}
		if _, err := cniconf.Parse(withListFields(t, list)); err != nil {
			t.Errorf("%s: plugin refuses the entry: %v", v, err)
		}
	}
	o := opts(t)
	o.CNIVersion = "0.3.1"
	if _, err := Install(o); err == nil {
		t.Error("cniVersion 0.3.1 accepted")
	}
}
