//go:build linux

package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/anet-dev/anet/lab/images"
)

// binaries are the programs a lab runs.
type binaries struct {
	anetd, cni, install, anetctl string
	loopback                     string // the reference loopback plugin: containerd 1.6 calls it for every sandbox
	k8s                          string // directory of kubelet, kubectl, kube-apiserver, ..., etcd
	coredns, corednsVersion      string // with Options.DNS only
}

// FindRepoRoot finds anet's source tree upwards from the working
// directory, else from the running executable (bin/anet-lab of a checkout).
func FindRepoRoot() (string, error) {
	var starts []string
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	if exe, err := os.Executable(); err == nil {
		starts = append(starts, filepath.Dir(exe))
	}
	for _, dir := range starts {
		for {
			if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && strings.Contains(string(b), "module github.com/anet-dev/anet\n") {
				return dir, nil
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				break
			}
			dir = parent
		}
	}
	return "", errors.New("cannot find anet's source tree (go.mod) above the working directory or the executable: run from the repository, or set Options.RepoRoot")
}

func (l *Lab) repoRoot() (string, error) {
	if l.opts.RepoRoot != "" {
		return l.opts.RepoRoot, nil
	}
	r, err := FindRepoRoot()
	if err == nil {
		l.opts.RepoRoot = r
	}
	return r, err
}

// binaries finds or builds anet's programs, and finds (or builds, through
// scripts/k8s-binaries.sh, cached) the Kubernetes ones.
func (l *Lab) binaries(ctx context.Context) (*binaries, error) {
	b := &binaries{}
	pkgs := []struct {
		dst  *string
		name string
		pkg  string
	}{
		{&b.anetd, "anetd", "./daemon/cmd/anetd"},
		{&b.cni, "anet-cni", "./plugins/anet-cni"},
		{&b.install, "anet-install", "./installer/cmd/anet-install"},
		{&b.anetctl, "anetctl", "./daemon/cmd/anetctl"},
		{&b.loopback, "loopback", "github.com/containernetworking/plugins/plugins/main/loopback"},
	}
	for _, p := range pkgs {
		if l.opts.AnetBinDir != "" {
			if f := filepath.Join(l.opts.AnetBinDir, p.name); isFile(f) {
				*p.dst = f
				continue
			}
		}
		root, err := l.repoRoot()
		if err != nil {
			return nil, fmt.Errorf("no %s to run (set ANET_BIN to a directory holding it) and cannot build it: %w", p.name, err)
		}
		out := filepath.Join(l.Dir, "bin", p.name)
		l.say("building %s", p.name)
		cmd := exec.CommandContext(ctx, "go", "build", "-o", out, p.pkg)
		cmd.Dir = root
		if o, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("go build %s: %w\n%s", p.pkg, err, o)
		}
		*p.dst = out
	}
	if l.opts.KubernetesBinDir != "" {
		b.k8s = l.opts.KubernetesBinDir
	} else {
		root, err := l.repoRoot()
		if err != nil {
			return nil, err
		}
		l.say("Kubernetes binaries: scripts/k8s-binaries.sh (cached; the first build takes ~15 min)")
		cmd := exec.CommandContext(ctx, filepath.Join(root, "scripts", "k8s-binaries.sh"))
		cmd.Stderr = l.progress
		out, err := cmd.Output()
		if err != nil {
			return nil, fmt.Errorf("scripts/k8s-binaries.sh: %w", err)
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		b.k8s = lines[len(lines)-1]
	}
	for _, n := range []string{"kubelet", "kubectl"} {
		if !isFile(filepath.Join(b.k8s, n)) {
			return nil, fmt.Errorf("no %s in %s", n, b.k8s)
		}
	}
	if l.opts.DNS {
		var err error
		if b.coredns, b.corednsVersion, err = l.corednsBinary(ctx); err != nil {
			return nil, err
		}
	}
	return b, nil
}

// buildImages builds (or finds up to date) the pause and anet-testserver
// image tarballs.
func (l *Lab) buildImages() ([]string, error) {
	root, err := l.repoRoot()
	if err != nil {
		return nil, err
	}
	l.say("images %s and %s (lab/images, cached in %s)", images.PauseRef, images.TestServerRef, l.opts.ImageDir)
	ts, pause, err := images.BuildTestImages(root, l.opts.ImageDir)
	if err != nil {
		return nil, err
	}
	return []string{pause, ts}, nil
}

func isFile(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}
