// Package images builds the container images of the test lab without a
// registry: a static binary in a one-layer linux/amd64 image, written as a
// docker-archive tarball ("docker save" format) that containerd imports
// with
//
//	ctr -a SOCK -n k8s.io images import FILE
//
// The image is stored under its normalized name: a ref "anet-testserver:latest"
// becomes docker.io/library/anet-testserver:latest, the name kubelet asks
// containerd for when a pod says "image: anet-testserver:latest". Pods use
// imagePullPolicy Never (or IfNotPresent): nothing can be pulled.
//
// Builds are reproducible: a fixed creation time, uid/gid 0, a fixed mode
// and no build stamps, so the same binary gives the same image digest.
package images

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// The refs of the lab's images, as pods and containerd's CRI config
// (sandbox_image) name them.
const (
	TestServerRef = "anet-testserver:latest"
	PauseRef      = "anet-pause:3.10"

	// Their normalized names, as containerd stores them.
	TestServerImage = "docker.io/library/anet-testserver:latest"
	PauseImage      = "docker.io/library/anet-pause:3.10"
)

// created is the creation time written into every image (the Unix epoch),
// so that builds are reproducible.
var created = time.Unix(0, 0).UTC()

// Normalize returns the fully qualified form of an image reference, the
// name under which containerd stores it: "anet-pause:3.10" ->
// "docker.io/library/anet-pause:3.10". A ref without a tag gets ":latest";
// digests are refused (an imported image needs a tag).
func Normalize(ref string) (string, error) {
	tag, err := name.NewTag(ref)
	if err != nil {
		return "", fmt.Errorf("image ref %q: %w", ref, err)
	}
	reg := tag.RegistryStr()
	if reg == name.DefaultRegistry { // "index.docker.io", which containerd spells docker.io
		reg = "docker.io"
	}
	return reg + "/" + tag.RepositoryStr() + ":" + tag.TagStr(), nil
}

// BuildBinaryImage writes a docker-archive tarball (loadable with
// `ctr -n k8s.io images import FILE`) of a one-layer linux/amd64 image
// holding the static binary at /<name>, name being binPath's base name,
// with mode 0755 and owner 0:0. entrypoint is the image's Entrypoint
// (["/<name>"] when empty), and the tarball's tag is ref normalized (see
// Normalize). out is replaced atomically.
//
// The binary must be a statically linked x86-64 ELF executable: the image
// has nothing else in it, no loader, no libc and no shell.
func BuildBinaryImage(binPath, ref string, entrypoint []string, out string) error {
	full, err := Normalize(ref)
	if err != nil {
		return err
	}
	tag, err := name.NewTag(full)
	if err != nil {
		return err
	}
	bin, err := os.ReadFile(binPath)
	if err != nil {
		return err
	}
	if err := checkStaticAMD64(bin); err != nil {
		return fmt.Errorf("%s: %w", binPath, err)
	}
	fileName := filepath.Base(binPath)
	if len(entrypoint) == 0 {
		entrypoint = []string{"/" + fileName}
	}

	layerTar, err := singleFileTar(fileName, bin)
	if err != nil {
		return err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	})
	if err != nil {
		return fmt.Errorf("layer: %w", err)
	}
	img, err := mutate.Append(empty.Image, mutate.Addendum{
		Layer: layer,
		History: v1.History{
			Created:   v1.Time{Time: created},
			CreatedBy: "anet lab/images: static binary /" + fileName,
		},
	})
	if err != nil {
		return err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cfg = cfg.DeepCopy()
	cfg.Architecture = "amd64"
	cfg.OS = "linux"
	cfg.Created = v1.Time{Time: created}
	cfg.Config.Entrypoint = entrypoint
	cfg.Config.Cmd = nil
	cfg.Config.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	cfg.Config.WorkingDir = "/"
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		return err
	}

	tmp, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".tmp*")
	if err != nil {
		return err
	}
	tmp.Close()
	defer os.Remove(tmp.Name()) // after a successful rename this fails harmlessly
	if err := tarball.WriteToFile(tmp.Name(), tag, img); err != nil {
		return fmt.Errorf("writing %s: %w", out, err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), out)
}

// singleFileTar returns an uncompressed tar holding one regular file, with
// everything that could vary between builds fixed.
func singleFileTar(fileName string, content []byte) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	hdr := &tar.Header{
		Typeflag: tar.TypeReg,
		Name:     fileName,
		Mode:     0o755,
		Size:     int64(len(content)),
		ModTime:  created,
		Format:   tar.FormatPAX,
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return nil, err
	}
	if _, err := tw.Write(content); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// checkStaticAMD64 refuses what could not run alone in the image: anything
// but an x86-64 ELF executable without a program interpreter.
func checkStaticAMD64(bin []byte) error {
	f, err := elf.NewFile(bytes.NewReader(bin))
	if err != nil {
		return fmt.Errorf("not an ELF executable: %w", err)
	}
	defer f.Close()
	if f.Machine != elf.EM_X86_64 {
		return fmt.Errorf("ELF machine %v, want x86-64 (the image is linux/amd64)", f.Machine)
	}
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return fmt.Errorf("ELF type %v is not an executable", f.Type)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return errors.New("dynamically linked (has a program interpreter); build it static, e.g. CGO_ENABLED=0")
		}
	}
	return nil
}

// The lab's image tarballs in BuildTestImages' dir.
const (
	TestServerTarball = "testserver.tar"
	PauseTarball      = "pause.tar"
)

// BuildTestImages builds anet-testserver (go build of ./lab/testserver in
// repoRoot, CGO_ENABLED=0, linux/amd64, into dir/bin) and writes two
// tarballs into dir: testserver.tar (TestServerRef, entrypoint
// ["/anet-testserver"]) and pause.tar (PauseRef, entrypoint
// ["/anet-testserver", "pause"]), returning their paths.
//
// The Go build cache makes an unchanged rebuild cheap; the cached binary
// is only replaced when its content changes, and a tarball is only
// rewritten when it is older than the binary. Concurrent calls on the same
// dir (parallel test packages) are serialized by a lock file in dir.
func BuildTestImages(repoRoot, dir string) (testserver, pause string, err error) {
	if _, err := os.Stat(filepath.Join(repoRoot, "go.mod")); err != nil {
		return "", "", fmt.Errorf("repoRoot %s: %w", repoRoot, err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "bin"), 0o755); err != nil {
		return "", "", err
	}
	unlock, err := lockDir(dir)
	if err != nil {
		return "", "", err
	}
	defer unlock()

	bin := filepath.Join(dir, "bin", "anet-testserver")
	if err := goBuild(repoRoot, "./lab/testserver", bin); err != nil {
		return "", "", err
	}
	st, err := os.Stat(bin)
	if err != nil {
		return "", "", err
	}
	testserver = filepath.Join(dir, TestServerTarball)
	pause = filepath.Join(dir, PauseTarball)
	for _, im := range []struct {
		out, ref   string
		entrypoint []string
	}{
		{testserver, TestServerRef, []string{"/anet-testserver"}},
		{pause, PauseRef, []string{"/anet-testserver", "pause"}},
	} {
		if t, err := os.Stat(im.out); err == nil && t.ModTime().After(st.ModTime()) {
			continue
		}
		if err := BuildBinaryImage(bin, im.ref, im.entrypoint, im.out); err != nil {
			return "", "", err
		}
	}
	return testserver, pause, nil
}

// goBuild builds a static linux/amd64 binary of pkg into out, replacing out
// only when the result differs (so that its mtime says when it changed).
// -trimpath and -buildvcs=false keep the output independent of the
// checkout's path and of uncommitted edits elsewhere in the tree.
func goBuild(repoRoot, pkg, out string) error {
	goBin, err := exec.LookPath("go")
	if err != nil {
		return fmt.Errorf("go toolchain: %w", err)
	}
	tmp := out + ".new"
	cmd := exec.Command(goBin, "build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w", "-o", tmp, pkg)
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if outb, err := cmd.CombinedOutput(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("go build %s: %v\n%s", pkg, err, outb)
	}
	newBin, err := os.ReadFile(tmp)
	if err != nil {
		return err
	}
	if old, err := os.ReadFile(out); err == nil && bytes.Equal(old, newBin) {
		return os.Remove(tmp)
	}
	return os.Rename(tmp, out)
}

// lockDir takes an exclusive flock on dir/.lock.
func lockDir(dir string) (unlock func(), err error) {
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
		if err != syscall.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("locking %s: %w", f.Name(), err)
	}
	return func() { f.Close() }, nil
}

// CoreDNSRef is the ref of the lab's CoreDNS image of a version ("1.15.0"):
// anet-coredns:1.15.0.
func CoreDNSRef(version string) string {
	return "anet-coredns:" + strings.TrimPrefix(version, "v")
}

// BuildCoreDNSImage writes dir/coredns-<version>.tar, the image
// CoreDNSRef(version) of the CoreDNS binary bin (a static build of
// scripts/coredns-binary.sh) with the entrypoint ["/coredns"], unless it
// is newer than bin already, and returns its path. Calls on the same dir
// are serialized as BuildTestImages' are.
func BuildCoreDNSImage(bin, version, dir string) (string, error) {
	if filepath.Base(bin) != "coredns" {
		return "", fmt.Errorf("%s: the CoreDNS binary must be named coredns (the image's /coredns)", bin)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	unlock, err := lockDir(dir)
	if err != nil {
		return "", err
	}
	defer unlock()
	st, err := os.Stat(bin)
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, "coredns-"+strings.TrimPrefix(version, "v")+".tar")
	if t, err := os.Stat(out); err == nil && t.ModTime().After(st.ModTime()) {
		return out, nil
	}
	if err := BuildBinaryImage(bin, CoreDNSRef(version), []string{"/coredns"}, out); err != nil {
		return "", err
	}
	return out, nil
}
