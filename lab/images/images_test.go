package images

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

const helloSrc = `package main

import "os"

func main() { os.Stdout.WriteString("hello from the image\n") }
`

var (
	helloOnce sync.Once
	helloBin  string
	helloErr  error
)

// tinyBinary builds (once per test run) a small static Go program.
func tinyBinary(t *testing.T) string {
	t.Helper()
	helloOnce.Do(func() {
		dir, err := os.MkdirTemp("", "anet-images-test")
		if err != nil {
			helloErr = err
			return
		}
		src := filepath.Join(dir, "main.go")
		if helloErr = os.WriteFile(src, []byte(helloSrc), 0o644); helloErr != nil {
			return
		}
		helloBin = filepath.Join(dir, "anet-hello")
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", helloBin, src)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "GOFLAGS=")
		if out, err := cmd.CombinedOutput(); err != nil {
			helloErr = errors.New("go build: " + err.Error() + "\n" + string(out))
		}
	})
	if helloErr != nil {
		t.Fatal(helloErr)
	}
	return helloBin
}

func TestMain(m *testing.M) {
	code := m.Run()
	if helloBin != "" {
		os.RemoveAll(filepath.Dir(helloBin))
	}
	os.Exit(code)
}

func TestNormalize(t *testing.T) {
	for in, want := range map[string]string{
		"anet-testserver:latest":              "docker.io/library/anet-testserver:latest",
		"anet-pause:3.10":                     "docker.io/library/anet-pause:3.10",
		"anet-testserver":                     "docker.io/library/anet-testserver:latest",
		"docker.io/library/anet-pause:3.10":   "docker.io/library/anet-pause:3.10",
		"index.docker.io/anet/x:1":            "docker.io/anet/x:1",
		"registry.lab.local:5000/anet/x:v1.2": "registry.lab.local:5000/anet/x:v1.2",
	} {
		got, err := Normalize(in)
		if err != nil || got != want {
			t.Errorf("Normalize(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "UPPER:case", "x@sha256:0123"} {
		if got, err := Normalize(bad); err == nil {
			t.Errorf("Normalize(%q) = %q, want an error", bad, got)
		}
	}
	if n, _ := Normalize(TestServerRef); n != TestServerImage {
		t.Errorf("TestServerImage %q != Normalize(TestServerRef) %q", TestServerImage, n)
	}
	if n, _ := Normalize(PauseRef); n != PauseImage {
		t.Errorf("PauseImage %q != Normalize(PauseRef) %q", PauseImage, n)
	}
}

// checkImage reads the tarball back and checks everything BuildBinaryImage
// promises.
func checkImage(t *testing.T, path, ref string, entrypoint []string, binPath string) v1.Image {
	t.Helper()
	full, err := Normalize(ref)
	if err != nil {
		t.Fatal(err)
	}

	// The repo tag, as written in manifest.json (what ctr import reads).
	m, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(path) })
	if err != nil {
		t.Fatal(err)
	}
	if len(m) != 1 || !slices.Equal(m[0].RepoTags, []string{full}) {
		t.Fatalf("manifest.json %+v, want one image tagged %q", m, full)
	}

	// Found by the short ref as well as by the full name.
	for _, r := range []string{ref, full} {
		tag, err := name.NewTag(r)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tarball.ImageFromPath(path, &tag); err != nil {
			t.Fatalf("ImageFromPath(%s): %v", r, err)
		}
	}
	img, err := tarball.ImageFromPath(path, nil)
	if err != nil {
		t.Fatal(err)
	}

	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.OS != "linux" || cfg.Architecture != "amd64" {
		t.Errorf("platform %s/%s, want linux/amd64", cfg.OS, cfg.Architecture)
	}
	if !slices.Equal(cfg.Config.Entrypoint, entrypoint) || len(cfg.Config.Cmd) != 0 {
		t.Errorf("entrypoint %q cmd %q, want %q and no cmd", cfg.Config.Entrypoint, cfg.Config.Cmd, entrypoint)
	}
	if !cfg.Created.Time.Equal(created) {
		t.Errorf("created %v, want %v", cfg.Created.Time, created)
	}

	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 1 || len(cfg.RootFS.DiffIDs) != 1 {
		t.Fatalf("%d layers, %d diff IDs; want 1", len(layers), len(cfg.RootFS.DiffIDs))
	}
	if mt, _ := layers[0].MediaType(); !mt.IsLayer() {
		t.Errorf("layer media type %q", mt)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	want, err := os.ReadFile(binPath)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(rc)
	hdr, err := tr.Next()
	if err != nil {
		t.Fatal(err)
	}
	if base := filepath.Base(binPath); hdr.Name != base || hdr.Typeflag != tar.TypeReg {
		t.Errorf("layer entry %q type %c, want regular file %q", hdr.Name, hdr.Typeflag, base)
	}
	if hdr.FileInfo().Mode().Perm() != 0o755 || hdr.Uid != 0 || hdr.Gid != 0 {
		t.Errorf("layer entry mode %v uid %d gid %d, want 0755 0 0", hdr.FileInfo().Mode(), hdr.Uid, hdr.Gid)
	}
	got, err := io.ReadAll(tr)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("layer holds %d bytes, not the binary (%d bytes)", len(got), len(want))
	}
	if hdr, err := tr.Next(); err != io.EOF {
		t.Errorf("layer has more than one entry: %v %v", hdr, err)
	}
	return img
}

func TestBuildBinaryImage(t *testing.T) {
	bin := tinyBinary(t)
	dir := t.TempDir()
	out := filepath.Join(dir, "hello.tar")
	ep := []string{"/anet-hello", "--flag"}
	if err := BuildBinaryImage(bin, "anet-hello:v1", ep, out); err != nil {
		t.Fatal(err)
	}
	checkImage(t, out, "anet-hello:v1", ep, bin)

	// Default entrypoint.
	out2 := filepath.Join(dir, "hello2.tar")
	if err := BuildBinaryImage(bin, "anet-hello", nil, out2); err != nil {
		t.Fatal(err)
	}
	checkImage(t, out2, "anet-hello:latest", []string{"/anet-hello"}, bin)

	// No temporary files left behind.
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			t.Errorf("left behind %s", e.Name())
		}
	}
}

func TestBuildBinaryImageReproducible(t *testing.T) {
	bin := tinyBinary(t)
	dir := t.TempDir()
	sum := func(name string) [32]byte {
		out := filepath.Join(dir, name)
		if err := BuildBinaryImage(bin, "anet-hello:v1", nil, out); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		return sha256.Sum256(b)
	}
	a := sum("a.tar")
	time.Sleep(10 * time.Millisecond)
	if b := sum("b.tar"); a != b {
		t.Error("two builds of the same binary differ")
	}
}

func TestBuildBinaryImageRefuses(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "script")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho hi\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cases := map[string]string{"a shell script": script, "a missing file": filepath.Join(dir, "nope")}
	if runtime.GOARCH == "amd64" {
		// Debian's /bin/true is dynamically linked.
		if f, err := elf.Open("/bin/true"); err == nil {
			for _, p := range f.Progs {
				if p.Type == elf.PT_INTERP {
					cases["a dynamic executable"] = "/bin/true"
				}
			}
			f.Close()
		}
	}
	for what, bin := range cases {
		out := filepath.Join(dir, "x.tar")
		if err := BuildBinaryImage(bin, "x:1", nil, out); err == nil {
			t.Errorf("built an image from %s", what)
		} else {
			t.Logf("%s: %v", what, err)
		}
		if _, err := os.Stat(out); err == nil {
			t.Errorf("%s: wrote %s anyway", what, out)
		}
	}
	if err := BuildBinaryImage(tinyBinary(t), "Bad Ref", nil, filepath.Join(dir, "y.tar")); err == nil {
		t.Error("accepted a bad ref")
	}
}

// repoRoot finds the module root above this package.
func repoRoot(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatal(err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		t.Fatal("not in a module")
	}
	return filepath.Dir(gomod)
}

func TestBuildTestImages(t *testing.T) {
	if testing.Short() {
		t.Skip("builds anet-testserver")
	}
	root := repoRoot(t)
	dir := t.TempDir()
	ts, pause, err := BuildTestImages(root, dir)
	if err != nil {
		t.Fatal(err)
	}
	if ts != filepath.Join(dir, "testserver.tar") || pause != filepath.Join(dir, "pause.tar") {
		t.Errorf("paths %s %s", ts, pause)
	}
	bin := filepath.Join(dir, "bin", "anet-testserver")
	checkImage(t, ts, TestServerRef, []string{"/anet-testserver"}, bin)
	checkImage(t, pause, PauseRef, []string{"/anet-testserver", "pause"}, bin)

	// The binary in the image is static and answers.
	out, err := exec.Command(bin, "help").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "connect") {
		t.Errorf("anet-testserver help: %v %s", err, out)
	}

	// A second call rewrites nothing.
	mtimes := func() []time.Time {
		var times []time.Time
		for _, p := range []string{bin, ts, pause} {
			st, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			times = append(times, st.ModTime())
		}
		return times
	}
	before := mtimes()
	if _, _, err := BuildTestImages(root, dir); err != nil {
		t.Fatal(err)
	}
	if after := mtimes(); !slices.Equal(before, after) {
		t.Errorf("second build touched files: %v -> %v", before, after)
	}

	// A tarball older than the binary is rebuilt.
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(pause, old, old); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(bin, old.Add(time.Minute), old.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := BuildTestImages(root, dir); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(pause)
	if err != nil {
		t.Fatal(err)
	}
	if !st.ModTime().After(old.Add(time.Minute)) {
		t.Error("stale pause.tar was not rebuilt")
	}
	checkImage(t, pause, PauseRef, []string{"/anet-testserver", "pause"}, bin)
}

func TestBuildCoreDNSImage(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(t.TempDir(), "coredns")
	if err := copyFile(tinyBinary(t), bin); err != nil {
		t.Fatal(err)
	}
	if got := CoreDNSRef("v1.15.0"); got != "anet-coredns:1.15.0" {
		t.Errorf("CoreDNSRef(v1.15.0) = %q", got)
	}
	out, err := BuildCoreDNSImage(bin, "1.15.0", dir)
	if err != nil {
		t.Fatal(err)
	}
	if out != filepath.Join(dir, "coredns-1.15.0.tar") {
		t.Errorf("tarball %s", out)
	}
	checkImage(t, out, "anet-coredns:1.15.0", []string{"/coredns"}, bin)

	// Up to date: not rewritten; older than the binary: rebuilt.
	st, err := os.Stat(out)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := BuildCoreDNSImage(bin, "1.15.0", dir); err != nil {
		t.Fatal(err)
	}
	if st2, err := os.Stat(out); err != nil || !st2.ModTime().Equal(st.ModTime()) {
		t.Errorf("an up-to-date tarball was rewritten (%v)", err)
	}
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(out, old, old); err != nil {
		t.Fatal(err)
	}
	if _, err := BuildCoreDNSImage(bin, "1.15.0", dir); err != nil {
		t.Fatal(err)
	}
	if st3, err := os.Stat(out); err != nil || !st3.ModTime().After(old) {
		t.Errorf("a stale tarball was not rebuilt (%v)", err)
	}

	// A binary of another name would not be /coredns in the image.
	if _, err := BuildCoreDNSImage(tinyBinary(t), "1.15.0", t.TempDir()); err == nil {
		t.Error("a binary not named coredns was accepted")
	}
}

func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o755)
}
