package main

import (
	"fmt"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// resolveCgroupRoot returns the cgroup v2 directory for --cgroup-root:
// the path itself when it is in a cgroup v2 hierarchy, else its unified/
// subdirectory when that is (a host with the v1 layout at /sys/fs/cgroup
// keeps the v2 hierarchy at /sys/fs/cgroup/unified).
func resolveCgroupRoot(path string) (string, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return "", fmt.Errorf("--cgroup-root %s: %w", path, err)
	}
	if st.Type == unix.CGROUP2_SUPER_MAGIC {
		return path, nil
	}
	unified := filepath.Join(path, "unified")
	if err := unix.Statfs(unified, &st); err == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
		return unified, nil
	}
	return "", fmt.Errorf("--cgroup-root %s is not in a cgroup v2 hierarchy, nor is %s (mount one with mount -t cgroup2 none DIR and give DIR or a directory below it)", path, unified)
}
