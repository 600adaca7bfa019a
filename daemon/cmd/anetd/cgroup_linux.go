package main

import (
	"fmt"
	"path/filepath"

	"github.com/anet-dev/anet/daemon/datapath"
)

// resolveCgroupRoot returns the cgroup v2 directory for --cgroup-root:
// the path itself when it is in a cgroup v2 hierarchy, else its unified/
// subdirectory when that is (a host with the v1 layout at /sys/fs/cgroup
// keeps the v2 hierarchy at /sys/fs/cgroup/unified).
func resolveCgroupRoot(path string) (string, error) {
	_, err := datapath.CheckCgroup2(path)
	if err == nil {
		return path, nil
	}
	unified := filepath.Join(path, "unified")
	if _, uerr := datapath.CheckCgroup2(unified); uerr == nil {
		return unified, nil
	}
	return "", fmt.Errorf("--cgroup-root %s is not in a cgroup v2 hierarchy, nor is %s: %w", path, unified, err)
}
