//go:build linux

package lab

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// NodeBindTargets are the machine paths that every node sees as a
// directory of its own (the value, under the node's directory) in its
// private mount namespace: paths that kubelet, containerd and libcni
// hard-code. /var/lib/cni is libcni's result cache (containerd's CNI
// calls), kept per node.
var NodeBindTargets = map[string]string{
	"/var/lib/kubelet":    "kubelet", // also kubelet's --root-dir
	"/var/log/containers": "var-log-containers",
	"/run/containerd":     "run-containerd",
	"/var/lib/cni":        "var-lib-cni",
}

// punchScript runs inside a node's mount namespace (a slave copy of the
// machine's) and gives it directories that the machine does not have,
// without making them on the machine: it replaces directory $1 (which
// exists) by a tmpfs that holds the same entries — each directory bound
// back from the machine's (recursively, so mounts below stay, and the
// machine's later mounts and unmounts still propagate), each other file
// bound back, each symlink copied — plus the missing directories given
// after $1, which exist only in this namespace. The machine's $1 stays
// reachable through an open descriptor (/proc/self/fd/3) once the tmpfs
// covers it, which also works when the lab's own directory is under $1.
//
// Writes into $1 itself (not into one of its subdirectories) land in the
// tmpfs, so they stay in the node too. mount -n: util-linux would
// otherwise make /run/mount (its utab) on the machine; -c: a
// canonicalized /proc/self/fd/3/... would name the covered path.
const punchScript = `set -eu
p=$1; shift
exec 3<"$p"
m=/proc/self/fd/3
mount -n -t tmpfs -o "mode=$(stat -c %a "$m/"),uid=$(stat -c %u "$m/"),gid=$(stat -c %g "$m/"),size=16m" anet-lab "$p"
for e in "$m"/* "$m"/.[!.]* "$m"/..?*; do
	[ -e "$e" ] || [ -L "$e" ] || continue
	n=${e##*/}
	if [ -L "$e" ]; then
		ln -s "$(readlink "$e")" "$p/$n"
	elif [ -d "$e" ]; then
		mkdir -p "$p/$n"
		mount -n -c --rbind "$e" "$p/$n"
	else
		: > "$p/$n"
		mount -n -c --bind "$e" "$p/$n"
	fi
done
exec 3<&-
for t; do mkdir -p "$p/$t"; done
`

// holes groups the targets missing on the machine by the deepest directory
// above them that exists: map[existing dir][]missing paths relative to it.
// The machine's root is refused: replacing / is more than a lab should do.
func holes(targets []string, exists func(string) bool) (map[string][]string, error) {
	out := map[string][]string{}
	for _, t := range targets {
		if exists(t) {
			continue
		}
		a := filepath.Dir(t)
		for a != "/" && !exists(a) {
			a = filepath.Dir(a)
		}
		if a == "/" {
			return nil, fmt.Errorf("%s: no directory above it but / exists on this machine", t)
		}
		rel, err := filepath.Rel(a, t)
		if err != nil {
			return nil, err
		}
		out[a] = append(out[a], rel)
	}
	return out, nil
}

// makeNodeMounts fills a node's mount namespace: each of dirs (a directory
// of the node, bound on a machine path) and files (a file of the node bound
// on a machine file that exists) is bound, the directory targets that the
// machine lacks first made in the namespace only (punchScript). Nothing is
// made, or written, outside the lab's directory.
func (l *Lab) makeNodeMounts(n *NodeRec, dirs, files [][2]string) error {
	var targets []string
	for _, bd := range dirs {
		if err := os.MkdirAll(bd[0], 0o755); err != nil {
			return err
		}
		targets = append(targets, bd[1])
	}
	hs, err := holes(targets, func(p string) bool { _, err := os.Lstat(p); return err == nil })
	if err != nil {
		return err
	}
	parents := make([]string, 0, len(hs))
	for p := range hs {
		parents = append(parents, p)
	}
	// Outer first: a hole in /var must not hide one made in /var/lib.
	slices.Sort(parents)
	for i, p := range parents {
		for _, q := range parents[:i] {
			if strings.HasPrefix(p, q+"/") {
				return fmt.Errorf("nested holes %s and %s: not supported", q, p)
			}
		}
		args := append([]string{"--mount=" + n.MountNS, "--", "sh", "-c", punchScript, "sh", p}, hs[p]...)
		if _, err := run("nsenter", args...); err != nil {
			return fmt.Errorf("making %v under %s in the node's mount namespace: %w", hs[p], p, err)
		}
	}
	for _, bd := range append(slices.Clone(dirs), files...) {
		if _, err := run("nsenter", "--mount="+n.MountNS, "--", "mount", "-n", "--bind", bd[0], bd[1]); err != nil {
			return err
		}
	}
	return nil
}
