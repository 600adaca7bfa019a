//go:build linux

package lab

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/anet-dev/anet/daemon/api"
	"github.com/anet-dev/anet/lab/controlplane"
	"github.com/anet-dev/anet/lab/images"
)

// prepareNodes records every node and makes its directories.
func (l *Lab) prepareNodes(n int) error {
	for i := 1; i <= n; i++ {
		if _, err := l.prepareNode(i); err != nil {
			return err
		}
	}
	return nil
}

// prepareNode records node i and makes its directories.
func (l *Lab) prepareNode(i int) (*NodeRec, error) {
	name := NodeName(i)
	dir := filepath.Join(l.Dir, "nodes", name)
	nr := NodeRec{
		Name:         name,
		Netns:        l.Name + "-" + name,
		Address:      NodeIP(i),
		Dir:          dir,
		MountNS:      filepath.Join(l.Dir, "ns", name+".mnt"),
		CgroupName:   l.Name + "-" + name,
		Socket:       filepath.Join(dir, "run", "anetd.sock"),
		BPFRoot:      filepath.Join(dir, "bpf"),
		StateDir:     filepath.Join(dir, "anetd"),
		Containerd:   filepath.Join(dir, "run", "containerd.sock"),
		CNIBinDir:    filepath.Join(dir, "cni", "bin"),
		CNIConfDir:   filepath.Join(dir, "cni", "net.d"),
		StaticPodDir: filepath.Join(dir, "manifests"),
	}
	for _, d := range []string{"logs", "run", "bpf", "anetd", "cni/bin", "cni/net.d", "containerd/root",
		"containerd/state", "containerd/opt", "runc", "kubelet-pki", "pod-logs", "manifests"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	l.Nodes = append(l.Nodes, nr)
	nodes := append([]NodeRec(nil), l.Nodes...)
	if err := l.st.update(func(s *State) { s.Nodes = nodes }); err != nil {
		return nil, err
	}
	return &l.Nodes[len(l.Nodes)-1], nil
}

func (l *Lab) recordProc(p Proc) error {
	return l.st.update(func(s *State) { s.Procs = append(s.Procs, p) })
}

// startNode brings one node up to a running kubelet: CNI files, cgroups,
// bpffs, mount namespace, containerd with the images, kubelet.
func (l *Lab) startNode(ctx context.Context, n *NodeRec, b *binaries, imgs []string) error {
	logs := filepath.Join(n.Dir, "logs")
	netns := l.netnsPath(n.Netns)

	// A node forwards between its pods and the fabric, as a real node
	// does; in tunnel mode anet's programs carry every pod packet and the
	// node forwards nothing.
	forward := "1"
	if l.opts.RoutingMode == "tunnel" {
		forward = "0"
	}
	if _, err := run("ip", "netns", "exec", n.Netns, "sysctl", "-q", "-w", "net.ipv4.ip_forward="+forward); err != nil {
		return err
	}

	// The CNI directories: anet-install puts anet-cni and its conflist
	// there, as the DaemonSet's init container does on a real node;
	// containerd 1.6's libcni takes results up to 1.0.0 only. The node's
	// "OS" provides the loopback plugin, which containerd calls for every
	// sandbox besides the configured network.
	// A CNIBridge lab gets the reference plugins instead (refcni.go).
	if l.opts.CNI == CNIBridge {
		if err := l.installBridgePlugins(ctx, n, b); err != nil {
			return err
		}
	} else {
		out, err := run(b.install, "--cni-bin-dir", n.CNIBinDir, "--cni-conf-dir", n.CNIConfDir,
			"--source-bin", b.cni, "--socket", n.Socket, "--bpf-root", n.BPFRoot, "--cni-version", "1.0.0")
		if err != nil {
			return err
		}
		_ = os.WriteFile(filepath.Join(logs, "anet-install.log"), []byte(out+"\n"), 0o644)
		if err := copyExecutable(b.loopback, filepath.Join(n.CNIBinDir, "loopback")); err != nil {
			return err
		}
	}

	roots, err := cgroupV1Roots()
	if err != nil {
		return err
	}
	for _, r := range roots {
		if err := l.makeCgroup(filepath.Join(r, n.CgroupName)); err != nil {
			return err
		}
	}
	if err := l.makeCgroup(filepath.Join(l.st.get().CgroupV2Mount, n.CgroupName)); err != nil {
		return err
	}
	if err := l.mount("bpf", n.BPFRoot, "bpf", 0, ""); err != nil {
		return err
	}

	// The node's mount namespace: a copy of the machine's (the bpffs and
	// cgroup2 mounts above included) where the paths kubelet and
	// containerd hard-code are the node's own, and where nothing can
	// resolve a name through the machine's DNS.
	resolv := filepath.Join(n.Dir, "resolv.conf")
	if err := os.WriteFile(resolv, []byte("# anet lab: no nameserver; nothing in the lab resolves names through the machine's DNS\noptions ndots:0\n"), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(n.MountNS, nil, 0o600); err != nil {
		return err
	}
	if err := l.st.update(func(s *State) { s.Mounts = append(s.Mounts, n.MountNS) }); err != nil {
		return err
	}
	if _, err := run("unshare", "--mount="+n.MountNS, "--propagation", "slave", "true"); err != nil {
		return err
	}
	var dirs [][2]string
	for _, t := range slices.Sorted(maps.Keys(NodeBindTargets)) {
		dirs = append(dirs, [2]string{filepath.Join(n.Dir, NodeBindTargets[t]), t})
	}
	if err := l.makeNodeMounts(n, dirs, [][2]string{{resolv, "/etc/resolv.conf"}}); err != nil {
		return err
	}

	// containerd
	cfg := filepath.Join(n.Dir, "containerd", "config.toml")
	if err := os.WriteFile(cfg, []byte(containerdConfig(n)), 0o644); err != nil {
		return err
	}
	containerd, err := exec.LookPath("containerd")
	if err != nil {
		return err
	}
	p, err := spawn(n.Name+"/containerd", netns, n.MountNS, filepath.Join(logs, "containerd.log"), containerd, "--config", cfg)
	if err != nil {
		return err
	}
	if err := l.recordProc(p); err != nil {
		return err
	}
	if err := waitFor(ctx, 30*time.Second, func() error {
		if !p.alive() {
			return fmt.Errorf("containerd exited:\n%s", tail(p.Log, 20))
		}
		_, err := run("ctr", "-a", n.Containerd, "version")
		return err
	}); err != nil {
		return fmt.Errorf("containerd not answering: %w", err)
	}
	for _, img := range imgs {
		if _, err := run("ctr", "-a", n.Containerd, "-n", "k8s.io", "images", "import", img); err != nil {
			return err
		}
	}
	var names []string
	for _, img := range imgs {
		names = append(names, strings.TrimSuffix(filepath.Base(img), ".tar"))
	}
	l.say("%s: containerd up, images imported (%s)", n.Name, strings.Join(names, ", "))

	// kubelet
	kcfg := filepath.Join(n.Dir, "kubelet-config.yaml")
	dnsIP, err := tenthAddress(l.opts.ServiceCIDR)
	if err != nil {
		return err
	}
	if err := os.WriteFile(kcfg, []byte(kubeletConfig(n, resolv, dnsIP)), 0o644); err != nil {
		return err
	}
	kp, err := spawn(n.Name+"/kubelet", netns, n.MountNS, filepath.Join(logs, "kubelet.log"),
		filepath.Join(b.k8s, "kubelet"),
		"--config="+kcfg,
		"--kubeconfig="+controlplane.NodeKubeconfigPath(l.st.get().ControlPlaneDir, n.Name),
		"--root-dir="+filepath.Join(n.Dir, "kubelet"),
		"--cert-dir="+filepath.Join(n.Dir, "kubelet-pki"),
		"--hostname-override="+n.Name,
		"--node-ip="+n.Address,
		"--v=1",
	)
	if err != nil {
		return err
	}
	if err := l.recordProc(kp); err != nil {
		return err
	}
	l.say("%s: kubelet started (pid %d) at %s", n.Name, kp.PID, n.Address)
	return nil
}

// startAnetd starts the node's anetd. It speaks to the API server
// (--kubeconfig): its pod CIDR comes from the Node, and it routes the other
// nodes' pod CIDRs. Its socket-level service hooks hang at
// <cgroup2>/<n.CgroupName>, where runc puts the node's pods (and where
// `anet-lab exec` starts its commands), and on no other node's.
func (l *Lab) startAnetd(ctx context.Context, n *NodeRec, b *binaries) error {
	n.HealthAddr = n.Address + ":9876"
	nodes := append([]NodeRec(nil), l.Nodes...)
	if err := l.st.update(func(s *State) { s.Nodes = nodes }); err != nil {
		return err
	}
	args := []string{b.anetd, "--node-name", n.Name, "--bpf-root", n.BPFRoot, "--state-dir", n.StateDir,
		"--socket", n.Socket, "--kubeconfig", l.st.get().AnetdKubeconfig, "--health-addr", n.HealthAddr,
		"--cgroup-root", filepath.Join(l.st.get().CgroupV2Mount, n.CgroupName)}
	if l.opts.KubeProxy != "" {
		args = append(args, "--enable-services=false")
	}
	if !l.besideKubeProxy(n.Name) {
		// No kube-proxy serves this node unless a test starts one
		// (StartKubeProxy): what one left goes when anetd starts.
		args = append(args, "--purge-kube-proxy-rules")
	}
	if l.opts.RoutingMode != "" {
		args = append(args, "--routing-mode", l.opts.RoutingMode)
	}
	if l.opts.EndpointGCGrace > 0 {
		args = append(args, "--endpoint-gc-grace", l.opts.EndpointGCGrace.String())
	}
	args = append(args, l.opts.AnetdArgs[n.Name]...)
	p, err := spawn(n.Name+"/anetd", l.netnsPath(n.Netns), n.MountNS, filepath.Join(n.Dir, "logs", "anetd.log"), args...)
	if err != nil {
		return err
	}
	if err := l.recordProc(p); err != nil {
		return err
	}
	if err := waitAnetd(ctx, p, n.Socket); err != nil {
		return err
	}
	l.say("%s: anetd ready (pid %d)", n.Name, p.PID)
	return nil
}

// besideKubeProxy tells whether a node's anetd leaves the Services to a
// kube-proxy: the lab runs one on every node (Options.KubeProxy), or the
// node's AnetdArgs turn anet's off (a benchmark starts one there). Such an
// anetd is not given --purge-kube-proxy-rules, which would remove the live
// kube-proxy's rules whenever anetd starts again.
func (l *Lab) besideKubeProxy(node string) bool {
	if l.opts.KubeProxy != "" {
		return true
	}
	off := false // the last --enable-services wins, as in anetd's flags
	for _, a := range l.opts.AnetdArgs[node] {
		name, val, ok := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if name != "enable-services" {
			continue
		}
		on, err := true, error(nil)
		if ok {
			on, err = strconv.ParseBool(val)
		}
		if err == nil {
			off = !on
		}
	}
	return off
}

// tenthAddress is the address 10 after a CIDR's base (10.96.0.10 for
// 10.96.0.0/16): the cluster DNS service's address by convention.
func tenthAddress(cidr string) (string, error) {
	p, err := netip.ParsePrefix(cidr)
	if err != nil {
		return "", fmt.Errorf("service CIDR %q: %w", cidr, err)
	}
	a := p.Masked().Addr()
	for range 10 {
		a = a.Next()
	}
	if !p.Contains(a) {
		return "", fmt.Errorf("service CIDR %s too small", cidr)
	}
	return a.String(), nil
}

func copyExecutable(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o755)
}

// waitAnetd waits until anetd p answers on its socket and is ready.
func waitAnetd(ctx context.Context, p Proc, socket string) error {
	err := waitFor(ctx, 60*time.Second, func() error {
		if !p.alive() {
			return fmt.Errorf("anetd exited:\n%s", tail(p.Log, 20))
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		st, err := api.NewClient(socket).Status(cctx)
		if err != nil {
			return err
		}
		if !st.Ready {
			return fmt.Errorf("anetd not ready: %s", st.Reason)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("anetd: %w", err)
	}
	return nil
}

// waitFor calls f until it succeeds, ctx ends or timeout passes.
func waitFor(ctx context.Context, timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	delay := 50 * time.Millisecond
	for {
		err := f()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %v: %w", timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		if delay < time.Second {
			delay *= 2
		}
	}
}

// containerdConfig is a node's containerd configuration: every path its
// own, the lab's pause image, the node's CNI directories.
//
// restrict_oom_score_adj is required: root here lacks CAP_SYS_RESOURCE, so
// runc cannot lower the sandbox's oom_score_adj and every sandbox would
// fail with "can't get final child's PID from pipe: EOF".
func containerdConfig(n *NodeRec) string {
	d := filepath.Join(n.Dir, "containerd")
	return fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = %q

[ttrpc]
  address = %q

[debug]
  address = %q

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = %q
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = %q
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    enable_selinux = false
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = %q
      conf_dir = %q
      max_conf_num = 1
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = false
          Root = %q
`, filepath.Join(d, "root"), filepath.Join(d, "state"), n.Containerd, n.Containerd+".ttrpc",
		filepath.Join(n.Dir, "run", "containerd-debug.sock"), filepath.Join(d, "opt"), images.PauseImage,
		n.CNIBinDir, n.CNIConfDir, filepath.Join(n.Dir, "runc"))
}

// kubeletConfig is a node's KubeletConfiguration.
//
//   - cgroupsPerQOS with cgroupRoot /<lab>-<node> (made beforehand in every
//     v1 hierarchy): each kubelet watches only its own containers, and runc
//     puts the pods under the same path in the cgroup v2 hierarchy, where
//     the node's anetd attaches its socket hooks.
//   - The kubelet API allows anonymous requests: the control plane has no
//     kubelet client certificate, and the API is only reachable inside the
//     lab's fabric. `kubectl exec` and `logs` need it.
//   - Image garbage collection never runs (the images cannot be pulled
//     again) and eviction thresholds are low (a busy shared disk must not
//     taint the nodes).
//   - resolvConf has no nameserver: pods do not resolve through the
//     machine's DNS. clusterDNS is the conventional tenth address of the
//     service range, the kube-dns Service's (with Options.DNS, dns.go;
//     without, it still gives pods a cluster-style resolv.conf and
//     silences kubelet's MissingClusterDNS events).
//   - Node status every 5 s (default 10 s) and at least every minute: after
//     the API server was down, nodes that the controller manager marked
//     NotReady are Ready again sooner.
//   - staticPodPath is the node's manifests/ (a real node's
//     /etc/kubernetes/manifests): a manifest there runs as a static pod,
//     checked every 5 s besides inotify.
func kubeletConfig(n *NodeRec, resolv, dnsIP string) string {
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: %s
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
containerRuntimeEndpoint: unix://%s
cgroupDriver: cgroupfs
cgroupsPerQOS: true
cgroupRoot: /%s
failCgroupV1: false
failSwapOn: false
localStorageCapacityIsolation: false
podLogsDir: %s
resolvConf: %s
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "50Mi"
  nodefs.available: "1%%"
  nodefs.inodesFree: "1%%"
  imagefs.available: "1%%"
serializeImagePulls: false
registerNode: true
maxPods: 110
clusterDomain: cluster.local
clusterDNS: [%s]
nodeStatusUpdateFrequency: 5s
nodeStatusReportFrequency: 1m
staticPodPath: %s
fileCheckFrequency: 5s
`, n.Address, n.Containerd, n.CgroupName, filepath.Join(n.Dir, "pod-logs"), resolv, dnsIP, n.StaticPodDir)
}
