//go:build linux

// Package lab brings up a real Kubernetes cluster on one machine, for
// anet's end-to-end tests and demo, and tears it down without a trace.
//
// Everything lives in network namespaces of its own. A "fabric" namespace
// holds a bridge that joins, each through a veth:
//
//	<name>-cp       the control plane (etcd, kube-apiserver,
//	                kube-controller-manager, kube-scheduler)  10.77.0.2
//	<name>-nodeI    simulated node I                          10.77.0.(10+I)
//	<name>-outside  a client for north-south tests            10.77.0.250
//
// Nothing in the lab has a route to the machine's network, and the
// machine's own namespace has no interface on the fabric: lab traffic is
// always sent from inside a lab namespace (Kubectl and Exec do that).
//
// A node is a network namespace with its own containerd and a real kubelet
// (both in a private mount namespace of the node, where /var/lib/kubelet,
// /var/log/containers, /run/containerd and /etc/resolv.conf are the node's
// own), a kubelet cgroup root /<name>-nodeI in every cgroup v1 hierarchy,
// its own anetd (bpffs directory, cgroup v2 subtree <cgroup2>/<name>-nodeI,
// unix socket, state directory) and CNI directories filled by
// anet-install. Pods are created by kubelet through containerd, which calls
// anet-cni, as on a real node. The pause and anet-testserver images are
// built locally (lab/images) and imported into every node's containerd.
// With Options.DNS the cluster runs CoreDNS, built from its Go module, as
// the kube-dns Service (dns.go); the control plane's namespace routes back
// to the nodes' pod CIDRs, so that pods reach the API server.
//
// Every thing the lab makes is recorded in <Dir>/state.json before or right
// after it is made, so that DownDir removes all of it (processes by
// recorded PID after checking executable and start time; mounts in reverse;
// namespaces; cgroups; sysctls; directories), also after a crash or a
// SIGKILL of the process that brought the lab up.
package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/anet-dev/anet/installer/manifests"
	"github.com/anet-dev/anet/installer/manifests/crds"
	"github.com/anet-dev/anet/lab/controlplane"
)

// Fabric addresses.
const (
	FabricPrefix   = "10.77.0.0/24"
	ControlPlaneIP = "10.77.0.2"
	OutsideIP      = "10.77.0.250"
)

// NodeIP is the underlay address of node i (1-based).
func NodeIP(i int) string { return fmt.Sprintf("10.77.0.%d", 10+i) }

// NodeName is the Kubernetes name of node i (1-based).
func NodeName(i int) string { return fmt.Sprintf("node%d", i) }

// Defaults.
const (
	DefaultName        = "anet-lab"
	DefaultDir         = "/var/lib/anet-lab"
	DefaultNodes       = 2
	DefaultServiceCIDR = "10.96.0.0/16"
	DefaultClusterCIDR = "10.244.0.0/16"
	maxNodes           = 200 // 10.77.0.(10+i) must stay below OutsideIP
)

// Options shape a lab.
type Options struct {
	Nodes int    // simulated nodes; default 2
	Dir   string // everything the lab writes; default /var/lib/anet-lab
	// Name prefixes every machine-wide name the lab makes (network
	// namespaces, cgroups), so that labs in different Dirs can run side by
	// side. Default "anet-lab"; at most 16 characters.
	Name string

	// AnetBinDir holds anetd, anet-cni, anet-install (and anetctl); those
	// missing are built from RepoRoot into Dir/bin. Default $ANET_BIN.
	AnetBinDir string
	// KubernetesBinDir holds kubelet, kubectl, kube-apiserver, ..., etcd.
	// Default: the output of scripts/k8s-binaries.sh (cached builds).
	KubernetesBinDir string
	// RepoRoot is anet's source tree; default: found upwards from the
	// working directory.
	RepoRoot string
	// ImageDir caches the image tarballs; default $ANET_CACHE/lab-images
	// ($ANET_CACHE defaults to /var/cache/anet).
	ImageDir string

	ServiceCIDR, ClusterCIDR string

	// Progress receives one line per step, with the elapsed time.
	Progress io.Writer `json:"-"`
	// KeepOnFailure leaves a lab that failed to come up in place for
	// inspection (DownDir removes it later).
	KeepOnFailure bool

	// CNI is the pods' network: CNIAnet (anet-cni and anetd; the default)
	// or CNIBridge (the reference bridge + host-local plugins and no
	// anetd, for comparisons; see refcni.go).
	CNI string

	// EndpointGCGrace is anetd's --endpoint-gc-grace: how old an endpoint
	// must be before anetd collects it when its pod is gone. 0: anetd's
	// default (30 s).
	EndpointGCGrace time.Duration

	// AnetdArgs are more flags for a node's anetd, by node name (e.g.
	// {"node2": {"--enable-services=false"}} for a node where a
	// kube-proxy serves the Services, as the benchmarks compare).
	AnetdArgs map[string][]string

	// KubeProxy, "iptables" or "nftables", runs the real kube-proxy in
	// that mode on every node (StartKubeProxy, once the nodes are Ready)
	// and starts every anetd with its own service handling off
	// (--enable-services=false): a cluster that keeps its kube-proxy
	// beside anet. Empty: no kube-proxy runs and anet serves the
	// Services.
	KubeProxy string

	// RoutingMode is anetd's --routing-mode: "" or "native" (routes to the
	// other nodes' pod CIDRs; IP forwarding on) or "tunnel" (the Geneve
	// overlay of anet's programs; IP forwarding off on every node).
	RoutingMode string

	// DNS deploys the cluster DNS (CoreDNS, built from its Go module by
	// scripts/coredns-binary.sh, as the kube-dns Service on the tenth
	// address of ServiceCIDR, kubelet's clusterDNS) and waits for it to be
	// ready as part of Up (see dns.go). `anet-lab up` turns it on unless
	// --dns=false.
	DNS bool
}

// Lab is a running lab.
type Lab struct {
	Dir   string
	Name  string
	Nodes []NodeRec

	st       *stateStore
	cp       *controlplane.ControlPlane // nil when opened from the state file
	start    time.Time
	progress io.Writer
	unlock   func()
	opts     Options

	mu     sync.Mutex
	closed bool
}

func (o *Options) defaults() error {
	if o.Nodes == 0 {
		o.Nodes = DefaultNodes
	}
	if o.Nodes < 1 || o.Nodes > maxNodes {
		return fmt.Errorf("lab: %d nodes: want 1 to %d", o.Nodes, maxNodes)
	}
	if o.Dir == "" {
		o.Dir = DefaultDir
	}
	if !filepath.IsAbs(o.Dir) {
		abs, err := filepath.Abs(o.Dir)
		if err != nil {
			return err
		}
		o.Dir = abs
	}
	if o.Name == "" {
		o.Name = DefaultName
	}
	if len(o.Name) > 16 || strings.ContainsAny(o.Name, "/ \t\n.") {
		return fmt.Errorf("lab: name %q: at most 16 characters, no '/', '.' or spaces", o.Name)
	}
	if o.AnetBinDir == "" {
		o.AnetBinDir = os.Getenv("ANET_BIN")
	}
	if o.ServiceCIDR == "" {
		o.ServiceCIDR = DefaultServiceCIDR
	}
	if o.ClusterCIDR == "" {
		o.ClusterCIDR = DefaultClusterCIDR
	}
	switch o.CNI {
	case "":
		o.CNI = CNIAnet
	case CNIAnet, CNIBridge:
	default:
		return fmt.Errorf("lab: CNI %q: want %q or %q", o.CNI, CNIAnet, CNIBridge)
	}
	switch o.RoutingMode {
	case "", "native", "tunnel":
	default:
		return fmt.Errorf("lab: routing mode %q: want native or tunnel", o.RoutingMode)
	}
	switch o.KubeProxy {
	case "", "iptables", "nftables":
	default:
		return fmt.Errorf("lab: kube-proxy mode %q: want iptables or nftables", o.KubeProxy)
	}
	if o.ImageDir == "" {
		cache := os.Getenv("ANET_CACHE")
		if cache == "" {
			cache = "/var/cache/anet"
		}
		o.ImageDir = filepath.Join(cache, "lab-images")
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	return nil
}

// say prints one progress line with the time since Up began.
func (l *Lab) say(format string, args ...any) {
	fmt.Fprintf(l.progress, "[%6.1fs] %s\n", time.Since(l.start).Seconds(), fmt.Sprintf(format, args...))
}

func (l *Lab) netnsPath(name string) string { return "/run/netns/" + name }

// Up brings a lab up and returns when every node is Ready. On failure (or
// when ctx ends) it removes what it made, unless o.KeepOnFailure.
func Up(ctx context.Context, o Options) (l *Lab, err error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("lab: needs root (network namespaces, mounts, cgroups, eBPF)")
	}
	if err := o.defaults(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return nil, err
	}
	unlock, err := lockDir(o.Dir)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(o.Dir, StateFile)); err == nil {
		unlock()
		return nil, fmt.Errorf("lab: %s already holds a lab (up, or left by a crash): run `anet-lab down --dir %s` first", o.Dir, o.Dir)
	}
	l = &Lab{
		Dir: o.Dir, Name: o.Name, start: time.Now(), progress: o.Progress, unlock: unlock, opts: o,
		st: &stateStore{path: filepath.Join(o.Dir, StateFile)},
	}
	if err := l.st.update(func(s *State) {
		opts := o
		*s = State{Name: o.Name, Dir: o.Dir, Created: time.Now().UTC(), Options: &opts}
		s.Owner, _ = identify("owner", os.Getpid(), "")
	}); err != nil {
		unlock()
		return nil, err
	}
	defer func() {
		if err == nil {
			return
		}
		if o.KeepOnFailure {
			l.say("up failed; the lab is left in place: anet-lab down --dir %s removes it", o.Dir)
			l.unlock()
			return
		}
		l.say("up failed: %v", err)
		l.say("removing what was made")
		if derr := l.Down(); derr != nil {
			err = errors.Join(err, fmt.Errorf("cleaning up: %w", derr))
		}
	}()
	if err := l.up(ctx); err != nil {
		return l, err
	}
	return l, nil
}

func (l *Lab) up(ctx context.Context) error {
	o := l.opts
	dns := "no cluster DNS"
	if o.DNS {
		dns = "cluster DNS"
	}
	proxy := "anet serves the Services"
	if o.KubeProxy != "" {
		proxy = "kube-proxy (" + o.KubeProxy + " mode) serves the Services"
	}
	l.say("lab %q in %s: %d node(s), CNI %s, %s, %s", o.Name, o.Dir, o.Nodes, o.CNI, dns, proxy)
	if err := ensureRuntime(l.say); err != nil {
		return err
	}
	bins, err := l.binaries(ctx)
	if err != nil {
		return err
	}
	if err := l.st.update(func(s *State) {
		s.AnetBinDir, s.KubernetesBinDir = filepath.Dir(bins.anetd), bins.k8s
		s.KubectlPath = filepath.Join(bins.k8s, "kubectl")
	}); err != nil {
		return err
	}
	// About 7 inotify instances per node (kubelet, containerd); the
	// default of 128 runs out near 17 nodes, sooner on a busy machine.
	if err := l.raiseSysctl("fs.inotify.max_user_instances", 1024); err != nil {
		return err
	}
	if err := l.makeFabric(o.Nodes); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}

	l.say("control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler) at %s", ControlPlaneIP)
	// A kubelet token for every node the lab may ever have (the API
	// server reads its token file at start): AddNode needs one.
	var names []string
	for i := 1; i <= maxNodes; i++ {
		names = append(names, NodeName(i))
	}
	cpDir := filepath.Join(l.Dir, "controlplane")
	cpNS := l.netnsPath(o.Name + "-cp")
	if err := l.st.update(func(s *State) { s.ControlPlaneDir, s.ControlPlaneNS = cpDir, cpNS }); err != nil {
		return err
	}
	cp, err := controlplane.Start(ctx, controlplane.Config{
		NetnsPath: cpNS, Address: ControlPlaneIP, Dir: cpDir, BinDir: bins.k8s,
		ServiceCIDR: o.ServiceCIDR, ClusterCIDR: o.ClusterCIDR, NodeNames: names,
		AuditUsers: []string{manifests.User},
	})
	if err != nil {
		return err
	}
	l.cp = cp
	if err := l.RecordControlPlane(); err != nil {
		return err
	}
	kc := filepath.Join(l.Dir, "kubeconfig")
	if b, err := os.ReadFile(cp.AdminKubeconfig); err != nil {
		return err
	} else if err := os.WriteFile(kc, b, 0o600); err != nil {
		return err
	}
	if err := l.st.update(func(s *State) { s.Kubeconfig, s.APIServerURL = kc, cp.URL }); err != nil {
		return err
	}
	l.say("control plane ready at %s", cp.URL)
	if o.CNI == CNIAnet {
		if err := l.installRBAC(); err != nil {
			return err
		}
	}

	if err := l.prepareNodes(o.Nodes); err != nil {
		return err
	}
	imgs, err := l.buildImages()
	if err != nil {
		return err
	}
	var dnsRef string
	if o.DNS {
		tarball, ref, err := l.buildDNSImage(bins.coredns, bins.corednsVersion)
		if err != nil {
			return err
		}
		imgs, dnsRef = append(imgs, tarball), ref
	}
	for i := range l.Nodes {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := l.startNode(ctx, &l.Nodes[i], bins, imgs); err != nil {
			return fmt.Errorf("%s: %w", l.Nodes[i].Name, err)
		}
	}
	for i := range l.Nodes {
		start := l.startAnetd
		if o.CNI == CNIBridge {
			start = l.startBridgeCNI
		}
		if err := start(ctx, &l.Nodes[i], bins); err != nil {
			return fmt.Errorf("%s: %w", l.Nodes[i].Name, err)
		}
	}
	if err := l.WaitNodesReady(ctx, 3*time.Minute); err != nil {
		return err
	}
	if err := l.routePodCIDRs(ctx); err != nil {
		return err
	}
	if o.KubeProxy != "" {
		for _, n := range l.Nodes {
			if err := l.StartKubeProxy(n.Name, o.KubeProxy); err != nil {
				return err
			}
		}
	}
	if o.DNS {
		if err := l.deployDNS(ctx, dnsRef); err != nil {
			return err
		}
	}
	if err := l.st.update(func(s *State) { s.Ready = true }); err != nil {
		return err
	}
	l.say("lab up: %d node(s) Ready; `anet-lab kubectl -- get nodes -o wide`", len(l.Nodes))
	return nil
}

// installRBAC applies what an operator applies before anetd runs (the
// CRDs, and anetd's Namespace, ServiceAccount and ClusterRole from
// installer/manifests), then gives anetd a kubeconfig with a token of that
// ServiceAccount: the lab's anetds run with the permissions anet ships,
// and the API server's audit log (AuditLogPath) records their requests.
func (l *Lab) installRBAC() error {
	if err := l.Apply(string(crds.SecurityIdentity) + "\n---\n" + string(manifests.RBAC)); err != nil {
		return fmt.Errorf("applying installer/manifests: %w", err)
	}
	kc := filepath.Join(l.Dir, "anetd.kubeconfig")
	if err := l.serviceAccountKubeconfig(kc, manifests.Namespace, manifests.ServiceAccount); err != nil {
		return err
	}
	l.say("anetd runs as %s (installer/manifests/rbac.yaml)", manifests.User)
	return l.st.update(func(s *State) { s.AnetdKubeconfig = kc })
}

// AuditLogPath is the API server's audit log of anetd's requests (one
// JSON audit event per line).
func (l *Lab) AuditLogPath() string {
	return controlplane.AuditLogPath(l.st.get().ControlPlaneDir)
}

// RecordControlPlane records the control plane's current processes in the
// state file; call it after restarting a component (StartAPIServer).
func (l *Lab) RecordControlPlane() error {
	pids := l.cp.PIDs()
	// In start order: down stops them in reverse, the apiserver before
	// etcd (an apiserver whose etcd is gone takes its whole grace period).
	names := []string{controlplane.Etcd, controlplane.APIServer, controlplane.ControllerManager, controlplane.Scheduler}
	var others []string
	for n := range pids {
		if !slices.Contains(names, n) {
			others = append(others, n)
		}
	}
	slices.Sort(others)
	var recs []Proc
	for _, name := range append(names, others...) {
		pid, ok := pids[name]
		if !ok {
			continue
		}
		p, err := identify(name, pid, "")
		if err != nil {
			continue
		}
		recs = append(recs, p)
	}
	return l.st.update(func(s *State) {
		s.Procs = slices.DeleteFunc(s.Procs, func(p Proc) bool { return !strings.Contains(p.Name, "/") })
		s.Procs = append(recs, s.Procs...)
	})
}

// ControlPlane is the running control plane (nil for a lab opened with
// Open: its processes are only known by PID then).
func (l *Lab) ControlPlane() *controlplane.ControlPlane { return l.cp }

// Open attaches to the lab in dir (brought up by another process, e.g.
// `anet-lab up`) for Kubectl, Exec, Status and Down.
func Open(dir string) (*Lab, error) {
	s, err := LoadState(dir)
	if err != nil {
		return nil, err
	}
	l := &Lab{Dir: s.Dir, Name: s.Name, Nodes: s.Nodes, st: &stateStore{path: filepath.Join(dir, StateFile), s: *s},
		start: time.Now(), progress: io.Discard}
	if s.Options != nil {
		l.opts = *s.Options
		l.opts.Progress = io.Discard
	}
	return l, nil
}

// State returns what the lab recorded.
func (l *Lab) State() State { return l.st.get() }

// Node returns the record of a node by its Kubernetes name.
func (l *Lab) Node(name string) (*NodeRec, bool) {
	for i := range l.Nodes {
		if l.Nodes[i].Name == name {
			return &l.Nodes[i], true
		}
	}
	return nil, false
}

// KubectlCmd returns a kubectl command against the lab, run inside the
// control plane's network namespace (the machine's own namespace has no
// route to the lab, on purpose). Its discovery and HTTP cache is the lab's
// own (<Dir>/kube-cache), not the user's ~/.kube/cache: every lab's API
// server is at the same address, so a cache shared between labs would
// serve one lab's resource kinds to the next.
func (l *Lab) KubectlCmd(args ...string) *exec.Cmd {
	s := l.st.get()
	argv := append([]string{"--net=" + s.ControlPlaneNS, "--", s.KubectlPath, "--kubeconfig", s.Kubeconfig,
		"--cache-dir", l.KubectlCacheDir()}, args...)
	return exec.Command("nsenter", argv...)
}

// KubectlCacheDir is the directory of the lab's kubectl cache.
func (l *Lab) KubectlCacheDir() string { return filepath.Join(l.Dir, "kube-cache") }

// Kubectl runs kubectl against the lab and returns its standard output;
// a failure's error holds its standard error.
func (l *Lab) Kubectl(args ...string) (string, error) {
	cmd := l.KubectlCmd(args...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// KubectlStdin is Kubectl with stdin (e.g. `apply -f -`).
func (l *Lab) KubectlStdin(stdin string, args ...string) (string, error) {
	cmd := l.KubectlCmd(args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// Apply runs `kubectl apply -f -` with the given manifest.
func (l *Lab) Apply(manifest string) error {
	_, err := l.KubectlStdin(manifest, "apply", "-f", "-")
	return err
}

// nodeList is the part of a NodeList the lab reads.
type nodeList struct {
	Items []struct {
		Metadata struct {
			Name string `json:"name"`
		} `json:"metadata"`
		Spec struct {
			PodCIDR  string   `json:"podCIDR"`
			PodCIDRs []string `json:"podCIDRs"`
		} `json:"spec"`
		Status struct {
			Conditions []struct {
				Type   string `json:"type"`
				Status string `json:"status"`
			} `json:"conditions"`
		} `json:"status"`
	} `json:"items"`
}

func (l *Lab) nodes() (*nodeList, error) {
	out, err := l.Kubectl("get", "nodes", "-o", "json")
	if err != nil {
		return nil, err
	}
	var nl nodeList
	if err := json.Unmarshal([]byte(out), &nl); err != nil {
		return nil, err
	}
	return &nl, nil
}

// PodCIDR returns the pod CIDR the controller manager gave a node ("" when
// none yet).
func (l *Lab) PodCIDR(node string) (string, error) {
	nl, err := l.nodes()
	if err != nil {
		return "", err
	}
	for _, n := range nl.Items {
		if n.Metadata.Name == node {
			return n.Spec.PodCIDR, nil
		}
	}
	return "", nil
}

// WaitNodesReady waits until every node of the lab is registered and Ready.
func (l *Lab) WaitNodesReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	last := ""
	for {
		nl, err := l.nodes()
		notReady := map[string]bool{}
		for _, n := range l.Nodes {
			notReady[n.Name] = true
		}
		if err == nil {
			for _, n := range nl.Items {
				for _, c := range n.Status.Conditions {
					if c.Type == "Ready" && c.Status == "True" {
						delete(notReady, n.Metadata.Name)
					}
				}
			}
		}
		if len(notReady) == 0 {
			l.say("nodes Ready")
			return nil
		}
		var names []string
		for n := range notReady {
			names = append(names, n)
		}
		slices.Sort(names)
		if s := strings.Join(names, ","); s != last {
			l.say("waiting for node(s) %s to be Ready", s)
			last = s
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nodes %v not Ready after %v (err %v)%s", names, timeout, err, l.nodeLogTails(names))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// nodeLogTails is the end of the logs of the named nodes' components.
func (l *Lab) nodeLogTails(names []string) string {
	var b strings.Builder
	for _, n := range names {
		nr, ok := l.Node(n)
		if !ok {
			continue
		}
		for _, c := range []string{"kubelet", "containerd", "anetd"} {
			fmt.Fprintf(&b, "\n--- %s %s log (last lines):\n%s", n, c, tail(filepath.Join(nr.Dir, "logs", c+".log"), 15))
		}
	}
	return b.String()
}

// PodNetns returns the path of a pod's network namespace as seen from the
// machine's mount namespace (/proc/PID/ns/net of its container's process).
func (l *Lab) PodNetns(namespace, pod string) (string, error) {
	c, err := l.podContainer(namespace, pod)
	if err != nil {
		return "", err
	}
	return c.netns, nil
}

// PodCgroup returns the cgroup v2 directory (under State.CgroupV2Mount) of
// a pod's container: the one `kubectl exec` without -c picks (the
// kubectl.kubernetes.io/default-container annotation, else the first).
func (l *Lab) PodCgroup(namespace, pod string) (string, error) {
	c, err := l.podContainer(namespace, pod)
	if err != nil {
		return "", err
	}
	return c.cgroup, nil
}

// podTarget is where Exec puts a command: a container of a pod.
type podTarget struct {
	cgroup string // its cgroup v2 directory
	netns  string // /proc/PID/ns/net of one of its processes
}

// podContainer finds a pod's default container (see PodCgroup) in the
// cgroup v2 hierarchy. kubelet (cgroupfs driver, cgroupsPerQOS) gives a pod
// the parent <cgroupRoot>/kubepods[/<qos>]/pod<uid>, and runc makes and
// joins <parent>/<container ID> in every hierarchy, the v2 one included
// (DESIGN.md), where the node's socket-level hooks see it.
func (l *Lab) podContainer(namespace, pod string) (*podTarget, error) {
	out, err := l.Kubectl("get", "pod", "-n", namespace, pod, "-o", "json")
	if err != nil {
		return nil, err
	}
	var p struct {
		Metadata struct {
			UID         string            `json:"uid"`
			Annotations map[string]string `json:"annotations"`
		} `json:"metadata"`
		Spec struct {
			NodeName   string `json:"nodeName"`
			Containers []struct {
				Name string `json:"name"`
			} `json:"containers"`
		} `json:"spec"`
		Status struct {
			ContainerStatuses []struct {
				Name        string `json:"name"`
				ContainerID string `json:"containerID"`
			} `json:"containerStatuses"`
		} `json:"status"`
	}
	if err := json.Unmarshal([]byte(out), &p); err != nil {
		return nil, fmt.Errorf("pod %s/%s: %w", namespace, pod, err)
	}
	if p.Spec.NodeName == "" {
		return nil, fmt.Errorf("pod %s/%s is not scheduled yet", namespace, pod)
	}
	n, ok := l.Node(p.Spec.NodeName)
	if !ok {
		return nil, fmt.Errorf("pod %s/%s runs on %s, not a node of this lab", namespace, pod, p.Spec.NodeName)
	}
	container := p.Metadata.Annotations["kubectl.kubernetes.io/default-container"]
	if container == "" && len(p.Spec.Containers) > 0 {
		container = p.Spec.Containers[0].Name
	}
	id := ""
	for _, cs := range p.Status.ContainerStatuses {
		if cs.Name == container {
			_, id, _ = strings.Cut(cs.ContainerID, "://")
		}
	}
	if id == "" {
		return nil, fmt.Errorf("pod %s/%s: container %q has not started", namespace, pod, container)
	}
	cg2 := l.st.get().CgroupV2Mount
	if cg2 == "" {
		return nil, errors.New("the lab has no cgroup v2 mount")
	}
	var dir string
	root := filepath.Join(cg2, n.CgroupName, "kubepods")
	_ = filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() || dir != "" {
			return nil
		}
		if d.Name() == "pod"+p.Metadata.UID {
			dir = filepath.Join(path, id)
			return filepath.SkipAll
		}
		// kubepods/<qos>/pod<uid>: no deeper.
		if rel, _ := filepath.Rel(root, path); strings.Count(rel, "/") >= 1 {
			return filepath.SkipDir
		}
		return nil
	})
	if dir == "" {
		return nil, fmt.Errorf("pod %s/%s (uid %s) has no cgroup under %s", namespace, pod, p.Metadata.UID, root)
	}
	pids := pidsInCgroup(dir)
	if len(pids) == 0 {
		return nil, fmt.Errorf("pod %s/%s: container %s has no process in %s", namespace, pod, container, dir)
	}
	return &podTarget{cgroup: dir, netns: fmt.Sprintf("/proc/%d/ns/net", pids[0])}, nil
}

// ExecCmd returns a command that runs a program of the machine in a pod as
// `kubectl exec` runs one in its container, as far as networking goes: in
// the pod's network namespace (nsenter) and in the container's cgroup v2
// (born there, clone3 with CLONE_INTO_CGROUP), so that the node's
// socket-level hooks (cgroup/connect4 and the others, attached at the
// node's subtree) apply to it as to the pod's own processes. Its mount
// namespace, and its cgroup v1 memberships, stay the machine's.
//
// The command holds the cgroup's directory open until it is garbage
// collected (SysProcAttr.CgroupFD must stay valid until Start).
func (l *Lab) ExecCmd(namespace, pod string, argv ...string) (*exec.Cmd, error) {
	if len(argv) == 0 {
		return nil, errors.New("no command")
	}
	c, err := l.podContainer(namespace, pod)
	if err != nil {
		return nil, err
	}
	cg, err := os.Open(c.cgroup)
	if err != nil {
		return nil, fmt.Errorf("opening the cgroup of %s/%s: %w", namespace, pod, err)
	}
	// A context that never ends, so that Cancel may be set: it is never
	// called, and holds the directory for as long as the command lives.
	cmd := exec.CommandContext(context.Background(), "nsenter", append([]string{"--net=" + c.netns, "--"}, argv...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	cmd.Cancel = func() error {
		_ = cg.Close()
		return cmd.Process.Kill()
	}
	return cmd, nil
}

// Exec runs a program of the machine in a pod (see ExecCmd) and returns its
// combined output.
func (l *Lab) Exec(namespace, pod string, argv ...string) (string, error) {
	cmd, err := l.ExecCmd(namespace, pod, argv...)
	if err != nil {
		return "", err
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// NodeCmd returns a command that runs inside a node's network and mount
// namespaces (where its kubelet, containerd and anetd run).
func (l *Lab) NodeCmd(node string, argv ...string) (*exec.Cmd, error) {
	n, ok := l.Node(node)
	if !ok {
		return nil, fmt.Errorf("no node %q in this lab", node)
	}
	return exec.Command("nsenter", append([]string{"--net=" + l.netnsPath(n.Netns), "--mount=" + n.MountNS, "--"}, argv...)...), nil
}

// OutsideCmd returns a command that runs in the "outside" client namespace.
func (l *Lab) OutsideCmd(argv ...string) *exec.Cmd {
	s := l.st.get()
	return exec.Command("nsenter", append([]string{"--net=" + l.netnsPath(s.OutsideNetns), "--"}, argv...)...)
}

// Down removes the lab (see DownDir). It is idempotent.
func (l *Lab) Down() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	l.mu.Unlock()
	if l.unlock != nil {
		defer l.unlock()
	}
	return downState(l.st, l.cp, l.progress, l.start)
}
