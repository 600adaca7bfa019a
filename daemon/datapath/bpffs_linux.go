package datapath

import (
	"fmt"
	"log/slog"
	"os"

	"golang.org/x/sys/unix"
)

// MountBPFFS makes sure that dir is on a bpf filesystem: when it is not,
// it creates dir and mounts one there (mount -t bpf bpf dir), and says so
// in the log. A directory already on a bpffs (a subdirectory of
// /sys/fs/bpf, or a mount of its own) is used as it is.
//
// The mount lives in anetd's mount namespace. In a container, the pins
// outlive anetd only if dir is a hostPath with mountPropagation:
// Bidirectional (or the host mounted a bpffs there first).
func MountBPFFS(dir string, log *slog.Logger) error {
	if CheckBPFFS(dir) == nil {
		return nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating bpf root %s: %w", dir, err)
	}
	if CheckBPFFS(dir) == nil {
		return nil // made inside a bpffs
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("bpf root %s is not on a bpf filesystem and mounting one there failed: %w", dir, err)
	}
	log.Info("mounted a bpf filesystem at the bpf root, which was not on one", "dir", dir)
	return CheckBPFFS(dir)
}
