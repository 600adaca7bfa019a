// Package installer puts anet's CNI plugin on a node: it copies the
// anet-cni binary into the CNI bin directory and writes anet's conflist
// (cniconf.Render) into the CNI conf directory. It is what anet-install,
// the init container of anet's DaemonSet, runs; the lab runs it per node.
//
// Each file is replaced atomically: written to a temporary file in the same
// directory, fsynced, renamed over the destination, and the directory is
// fsynced. A container runtime that reads the directory at any moment sees
// either the old file or the new one, never a partial one. The binary goes
// first, so a conflist never names a plugin that is not there yet.
//
// Install is idempotent: a file whose content is already right is left
// alone (not even its mtime changes), which keeps runtimes that watch the
// conf directory from reloading for nothing.
package installer

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/google/renameio/v2"

	"github.com/anet-dev/anet/cniconf"
)

// ConflistName is the file anet's conflist is written to. Runtimes take the
// first conflist of the conf directory in lexical order; "10-" puts anet
// ahead of the usual "99-loopback" and the like.
const ConflistName = "10-anet.conflist"

// Options say where to install and what the conflist holds.
type Options struct {
	CNIBinDir  string // required: where the plugin binary goes
	CNIConfDir string // required: where the conflist goes
	SourceBin  string // required: the anet-cni binary to copy

	// The conflist's node-specific values; empty ones take cniconf's
	// defaults.
	Socket  string
	BPFRoot string
	MTU     int
	Name    string // the network name

	// CNIVersion is the conflist's cniVersion; empty means cniconf's
	// (1.1.0, the newest the plugin speaks, needed for STATUS and GC).
	// Runtimes with an older libcni need an older one: containerd 1.6
	// (Debian bookworm) refuses results of 1.1.0 and takes 1.0.0.
	CNIVersion string
}

// SupportedCNIVersions are the conflist versions anet-install writes.
var SupportedCNIVersions = cniconf.RenderVersions

// Result says what Install did.
type Result struct {
	BinaryPath, ConflistPath       string
	BinaryChanged, ConflistChanged bool
}

// Install copies the plugin and writes the conflist (see the package doc).
func Install(o Options) (*Result, error) {
	if o.CNIBinDir == "" || o.CNIConfDir == "" || o.SourceBin == "" {
		return nil, errors.New("the CNI bin dir, the CNI conf dir and the source binary are required")
	}
	conf, err := cniconf.Render(cniconf.RenderOptions{CNIVersion: o.CNIVersion, Name: o.Name, Socket: o.Socket, BPFRoot: o.BPFRoot, MTU: o.MTU})
	if err != nil {
		return nil, fmt.Errorf("rendering conflist: %w", err)
	}
	st, err := os.Stat(o.SourceBin)
	if err != nil {
		return nil, fmt.Errorf("source binary: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("source binary %s is not a regular file", o.SourceBin)
	}
	r := &Result{
		BinaryPath:   filepath.Join(o.CNIBinDir, cniconf.PluginType),
		ConflistPath: filepath.Join(o.CNIConfDir, ConflistName),
	}
	for _, d := range []string{o.CNIBinDir, o.CNIConfDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	if r.BinaryChanged, err = copyFile(o.SourceBin, r.BinaryPath, 0o755); err != nil {
		return nil, fmt.Errorf("installing %s: %w", r.BinaryPath, err)
	}
	if r.ConflistChanged, err = writeFile(r.ConflistPath, conf, 0o644); err != nil {
		return nil, fmt.Errorf("writing %s: %w", r.ConflistPath, err)
	}
	return r, nil
}

// copyFile replaces dst with src's content and the given mode, atomically,
// unless dst already has both. It reports whether it wrote.
func copyFile(src, dst string, mode os.FileMode) (bool, error) {
	same, err := sameContent(src, dst, mode)
	if err != nil || same {
		return false, err
	}
	in, err := os.Open(src)
	if err != nil {
		return false, err
	}
	defer in.Close()
	t, err := renameio.TempFile(filepath.Dir(dst), dst)
	if err != nil {
		return false, err
	}
	defer t.Cleanup() // a no-op after CloseAtomicallyReplace
	if _, err := io.Copy(t, in); err != nil {
		return false, err
	}
	if err := t.Chmod(mode); err != nil {
		return false, err
	}
	if err := t.CloseAtomicallyReplace(); err != nil { // fsync, close, rename
		return false, err
	}
	return true, syncDir(filepath.Dir(dst))
}

// writeFile is copyFile for content held in memory.
func writeFile(dst string, data []byte, mode os.FileMode) (bool, error) {
	if old, err := os.ReadFile(dst); err == nil && bytes.Equal(old, data) {
		if st, err := os.Stat(dst); err == nil && st.Mode().Perm() == mode {
			return false, nil
		}
	}
	t, err := renameio.TempFile(filepath.Dir(dst), dst)
	if err != nil {
		return false, err
	}
	defer t.Cleanup()
	if _, err := t.Write(data); err != nil {
		return false, err
	}
	if err := t.Chmod(mode); err != nil {
		return false, err
	}
	if err := t.CloseAtomicallyReplace(); err != nil {
		return false, err
	}
	return true, syncDir(filepath.Dir(dst))
}

// sameContent tells whether dst is a regular file with src's bytes and the
// given permissions. A missing dst is not an error.
func sameContent(src, dst string, mode os.FileMode) (bool, error) {
	dstSt, err := os.Stat(dst)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	srcSt, err := os.Stat(src)
	if err != nil {
		return false, err
	}
	if !dstSt.Mode().IsRegular() || dstSt.Mode().Perm() != mode || dstSt.Size() != srcSt.Size() {
		return false, nil
	}
	a, err := fileHash(src)
	if err != nil {
		return false, err
	}
	b, err := fileHash(dst)
	if err != nil {
		return false, err
	}
	return bytes.Equal(a, b), nil
}

func fileHash(p string) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return nil, err
	}
	return h.Sum(nil), nil
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}
