package controlplane

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
)

var (
	binOnce sync.Once
	binDir  string
	binErr  error
)

// BinDir returns the directory of the pinned Kubernetes binaries, running
// scripts/k8s-binaries.sh once per process: a no-op when they are cached, a
// long build (about 15 minutes on 2 cores) on a fresh machine, whose
// progress goes to stderr.
func BinDir() (string, error) {
	binOnce.Do(func() {
		root, err := repoRoot()
		if err != nil {
			binErr = err
			return
		}
		fmt.Fprintln(os.Stderr, "controlplane: scripts/k8s-binaries.sh (builds Kubernetes on first use; ~15 min cold)")
		cmd := exec.Command(filepath.Join(root, "scripts", "k8s-binaries.sh"))
		cmd.Stderr = os.Stderr
		out, err := cmd.Output()
		if err != nil {
			binErr = fmt.Errorf("scripts/k8s-binaries.sh: %w", err)
			return
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		binDir = lines[len(lines)-1]
	})
	return binDir, binErr
}

// repoRoot finds the directory of anet's go.mod from the working directory
// upwards (tests run in their package's directory).
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && strings.Contains(string(b), "module github.com/anet-dev/anet\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("controlplane: cannot find anet's go.mod above the working directory")
		}
		dir = parent
	}
}
