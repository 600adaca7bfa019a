//go:build linux

// Package testnode sets up one simulated anet node for tests: a network
// namespace of its own (no route anywhere, IP forwarding off), a bpffs, an
// anetd of its own, the rendered conflist, and pods (network namespaces)
// wired through libcni exactly as a container runtime wires them. Everything
// it makes is removed in t.Cleanup, also when the test fails.
package testnode

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"golang.org/x/sys/unix"

	"github.com/anet-dev/anet/cniconf"
	"github.com/anet-dev/anet/daemon/api"
	"github.com/anet-dev/anet/internal/testhook"
)

// NeedRoot skips a test that needs root. CI runs as root, so these tests run
// there.
func NeedRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces, bpffs, eBPF); CI runs as root")
	}
}

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// Bin returns the directory holding anet-cni, anetd, anetctl and the
// reference plugins: $ANET_BIN when set (make test sets it), else a build
// into a temporary directory, once per test binary.
func Bin(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		if d := os.Getenv("ANET_BIN"); d != "" {
			binDir = d
			return
		}
		binDir, buildErr = os.MkdirTemp("", "anet-bin-")
		if buildErr != nil {
			return
		}
		for _, pkg := range []string{
			"github.com/anet-dev/anet/plugins/anet-cni",
			"github.com/anet-dev/anet/daemon/cmd/anetd",
			"github.com/anet-dev/anet/daemon/cmd/anetctl",
			"github.com/containernetworking/cni/cnitool",
			"github.com/containernetworking/plugins/plugins/main/bridge",
			"github.com/containernetworking/plugins/plugins/ipam/host-local",
		} {
			out := filepath.Join(binDir, filepath.Base(pkg))
			cmd := exec.Command("go", "build", "-o", out, pkg)
			if b, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

// Node is one simulated node.
type Node struct {
	t        testing.TB
	Name     string
	Dir      string
	NS       ns.NetNS
	BPFRoot  string
	StateDir string
	Socket   string
	ConfDir  string
	PodCIDR  string
	Bin      string

	anetdArgs []string
	anetdEnv  []string // more environment for the next StartAnetd

	mu    sync.Mutex
	anetd *exec.Cmd
	done  chan struct{}
	log   *syncBuffer
}

// syncBuffer is anetd's log: written by exec's copying goroutine, read by
// the test.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Options shape a node.
type Options struct {
	PodCIDR   string   // default 10.244.1.0/24
	AnetdArgs []string // more flags for anetd
}

func randID() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// New makes a node and starts its anetd.
func New(t testing.TB, o Options) *Node {
	t.Helper()
	NeedRoot(t)
	if o.PodCIDR == "" {
		o.PodCIDR = "10.244.1.0/24"
	}
	n := &Node{t: t, Name: "anet-t-" + randID(), PodCIDR: o.PodCIDR, Bin: Bin(t), anetdArgs: o.AnetdArgs}
	dir, err := os.MkdirTemp("", n.Name+"-")
	if err != nil {
		t.Fatal(err)
	}
	n.Dir = dir
	n.BPFRoot = filepath.Join(dir, "bpf")
	n.StateDir = filepath.Join(dir, "state")
	n.Socket = filepath.Join(dir, "run", "anetd.sock")
	n.ConfDir = filepath.Join(dir, "net.d")
	t.Cleanup(n.cleanup)
	for _, d := range []string{n.BPFRoot, n.StateDir, n.ConfDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Mount("bpf", n.BPFRoot, "bpf", 0, ""); err != nil {
		t.Fatalf("mounting bpffs: %v", err)
	}
	n.NS, err = testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	err = n.NS.Do(func(ns.NetNS) error {
		if err := exec.Command("ip", "link", "set", "lo", "up").Run(); err != nil {
			return fmt.Errorf("lo up: %w", err)
		}
		// Same-node forwarding must not depend on the host routing pods.
		return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("0"), 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	conf, err := cniconf.Render(cniconf.RenderOptions{Name: "anet", Socket: n.Socket})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(n.ConfDir, "10-anet.conflist"), conf, 0o644); err != nil {
		t.Fatal(err)
	}
	n.StartAnetd()
	return n
}

// NSEnter returns a command that runs in the node's network namespace.
func (n *Node) NSEnter(name string, args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=" + n.NS.Path(), "--", name}, args...)...)
}

// StartAnetd starts anetd and waits until it is ready.
func (n *Node) StartAnetd() {
	n.t.Helper()
	n.startAnetd(false)
}

// StartAnetdHeld starts anetd held by its test hook before it restores its
// endpoints, and waits until its socket answers, not ready. ReleaseAnetd
// lets it go on.
func (n *Node) StartAnetdHeld() {
	n.t.Helper()
	n.startAnetd(true)
}

// ReleaseAnetd lets an anetd started with StartAnetdHeld go on and waits
// until it is ready.
func (n *Node) ReleaseAnetd() {
	n.t.Helper()
	n.mu.Lock()
	cmd, done := n.anetd, n.done
	n.mu.Unlock()
	if cmd == nil {
		n.t.Fatal("anetd is not running")
	}
	_ = cmd.Process.Signal(syscall.SIGUSR1)
	n.waitAnetd(done, true)
}

func (n *Node) startAnetd(held bool) {
	n.t.Helper()
	n.mu.Lock()
	if n.anetd != nil {
		n.mu.Unlock()
		n.t.Fatal("anetd already running")
	}
	n.log = &syncBuffer{}
	args := []string{"--bpf-root", n.BPFRoot, "--state-dir", n.StateDir, "--socket", n.Socket,
		"--node-name", n.Name, "--pod-cidr", n.PodCIDR, "--log-level", "debug"}
	cmd := n.NSEnter(filepath.Join(n.Bin, "anetd"), append(args, n.anetdArgs...)...)
	cmd.Env = append(os.Environ(), n.anetdEnv...)
	cmd.Stdout, cmd.Stderr = n.log, n.log
	if held {
		cmd.Env = append(os.Environ(), "ANETD_TEST_HOLD_RESTORE=1")
	}
	if err := cmd.Start(); err != nil {
		n.mu.Unlock()
		n.t.Fatal(err)
	}
	n.anetd = cmd
	done := make(chan struct{})
	n.done = done
	go func() { _ = cmd.Wait(); close(done) }()
	n.mu.Unlock()
	n.waitAnetd(done, !held)
}

// waitAnetd waits until anetd answers on its socket, and is ready if ready.
func (n *Node) waitAnetd(done chan struct{}, ready bool) {
	n.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		st, err := n.Client().Status(ctx)
		cancel()
		if err == nil && st.Ready == ready {
			return
		}
		select {
		case <-done:
			n.t.Fatalf("anetd exited:\n%s", n.Log())
		case <-time.After(50 * time.Millisecond):
		}
	}
	n.t.Fatalf("anetd not answering (ready %v) after 20s:\n%s", ready, n.Log())
}

// KillAnetd sends SIGKILL to anetd and waits for it to die.
func (n *Node) KillAnetd() { n.stopAnetd(syscall.SIGKILL) }

// StopAnetd sends SIGTERM to anetd and waits for it to exit.
func (n *Node) StopAnetd() { n.stopAnetd(syscall.SIGTERM) }

func (n *Node) stopAnetd(sig syscall.Signal) {
	n.mu.Lock()
	cmd, done := n.anetd, n.done
	n.anetd = nil
	n.mu.Unlock()
	if cmd == nil {
		return
	}
	// nsenter execs anetd in place: the PID is anetd's.
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

// Log returns what anetd logged since its last start.
func (n *Node) Log() string {
	n.mu.Lock()
	l := n.log
	n.mu.Unlock()
	if l == nil {
		return ""
	}
	return l.String()
}

// Client is an API client of the node's anetd.
func (n *Node) Client() *api.Client { return api.NewClient(n.Socket) }

// Anetctl runs anetctl against the node's anetd.
func (n *Node) Anetctl(args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(n.Bin, "anetctl"), append([]string{"--socket", n.Socket}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// Conflist returns the node's rendered network configuration list.
func (n *Node) Conflist() *libcni.NetworkConfigList {
	n.t.Helper()
	b, err := os.ReadFile(filepath.Join(n.ConfDir, "10-anet.conflist"))
	if err != nil {
		n.t.Fatal(err)
	}
	list, err := libcni.ConfListFromBytes(b)
	if err != nil {
		n.t.Fatal(err)
	}
	return list
}

// Pod is a network namespace standing for a pod's sandbox.
type Pod struct {
	Name        string
	NS          ns.NetNS
	ContainerID string
	IfName      string
	Result      *current.Result
	node        *Node
}

// NewPod makes a pod netns (not yet wired). It is removed at cleanup.
func (n *Node) NewPod(name string) *Pod {
	n.t.Helper()
	pns, err := testutils.NewNS()
	if err != nil {
		n.t.Fatal(err)
	}
	p := &Pod{Name: name, NS: pns, ContainerID: "c" + randID() + "-" + name, IfName: "eth0", node: n}
	n.t.Cleanup(func() {
		pns.Close()
		_ = testutils.UnmountNS(pns)
	})
	_ = p.NS.Do(func(ns.NetNS) error { return exec.Command("ip", "link", "set", "lo", "up").Run() })
	return p
}

// RuntimeConf is what a container runtime would pass for p.
func (p *Pod) RuntimeConf() *libcni.RuntimeConf {
	return &libcni.RuntimeConf{
		ContainerID: p.ContainerID, NetNS: p.NS.Path(), IfName: p.IfName,
		Args: [][2]string{{"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", p.Name}, {"K8S_POD_UID", "uid-" + p.Name}},
	}
}

// cni runs f with a libcni handle from inside the node's netns: the plugin
// inherits it from the locked thread that forks it.
func (n *Node) cni(f func(c *libcni.CNIConfig) error) error {
	// libcni's result cache goes under the node's directory, not the
	// machine's /var/lib/cni.
	c := libcni.NewCNIConfigWithCacheDir([]string{n.Bin}, filepath.Join(n.Dir, "cni-cache"), nil)
	var err error
	doErr := n.NS.Do(func(ns.NetNS) error {
		err = f(c)
		return nil
	})
	if doErr != nil {
		return doErr
	}
	return err
}

// Add wires p through libcni (ADD of the whole conflist).
func (n *Node) Add(p *Pod) (*current.Result, error) {
	var res types.Result
	err := n.cni(func(c *libcni.CNIConfig) error {
		var err error
		res, err = c.AddNetworkList(context.Background(), n.Conflist(), p.RuntimeConf())
		return err
	})
	if err != nil {
		return nil, err
	}
	r, err := current.NewResultFromResult(res)
	if err != nil {
		return nil, err
	}
	p.Result = r
	return r, nil
}

// MustAdd is Add that fails the test on error.
func (n *Node) MustAdd(p *Pod) *current.Result {
	n.t.Helper()
	r, err := n.Add(p)
	if err != nil {
		n.t.Fatalf("ADD %s: %v\nanetd log:\n%s", p.Name, err, n.Log())
	}
	return r
}

// Del runs DEL for p.
func (n *Node) Del(p *Pod) error {
	return n.cni(func(c *libcni.CNIConfig) error {
		return c.DelNetworkList(context.Background(), n.Conflist(), p.RuntimeConf())
	})
}

// Check runs CHECK for p (libcni passes the cached ADD result).
func (n *Node) Check(p *Pod) error {
	return n.cni(func(c *libcni.CNIConfig) error {
		return c.CheckNetworkList(context.Background(), n.Conflist(), p.RuntimeConf())
	})
}

// Status runs STATUS.
func (n *Node) Status() error {
	return n.cni(func(c *libcni.CNIConfig) error {
		return c.GetStatusNetworkList(context.Background(), n.Conflist())
	})
}

// GC runs GC keeping the given pods' attachments.
func (n *Node) GC(keep ...*Pod) error {
	args := &libcni.GCArgs{}
	for _, p := range keep {
		args.ValidAttachments = append(args.ValidAttachments, types.GCAttachment{ContainerID: p.ContainerID, IfName: p.IfName})
	}
	return n.cni(func(c *libcni.CNIConfig) error {
		return c.GCNetworkList(context.Background(), n.Conflist(), args)
	})
}

// IP is the pod's address from its ADD result.
func (p *Pod) IP() net.IP {
	if p.Result == nil || len(p.Result.IPs) == 0 {
		return nil
	}
	return p.Result.IPs[0].Address.IP
}

// Do runs f in the pod's netns (sockets made there stay there).
func (p *Pod) Do(f func() error) error {
	return p.NS.Do(func(ns.NetNS) error { return f() })
}

// Exec runs a command in the pod's netns and returns its combined output.
func (p *Pod) Exec(name string, args ...string) (string, error) {
	out, err := exec.Command("nsenter", append([]string{"--net=" + p.NS.Path(), "--", name}, args...)...).CombinedOutput()
	return string(out), err
}

// Leftovers lists what the node holds beyond lo: links, link pins,
// allocations, endpoint records. Empty means clean.
func (n *Node) Leftovers() []string {
	var out []string
	_ = n.NS.Do(func(ns.NetNS) error {
		ifs, _ := net.Interfaces()
		for _, i := range ifs {
			if i.Name != "lo" {
				out = append(out, "link "+i.Name)
			}
		}
		return nil
	})
	// A directory that anetd makes at its start must be there and readable:
	// a renamed layout must not pass as clean. The plugin's pending
	// directories are made on first use.
	list := func(dir, what string, mustExist bool, skip func(string) bool) {
		es, err := os.ReadDir(dir)
		if err != nil && (mustExist || !errors.Is(err, os.ErrNotExist)) {
			out = append(out, fmt.Sprintf("%ss unreadable: %v", what, err))
		}
		for _, e := range es {
			if !skip(e.Name()) {
				out = append(out, what+" "+e.Name())
			}
		}
	}
	none := func(string) bool { return false }
	list(filepath.Join(n.BPFRoot, "links"), "link pin", true, none)
	list(filepath.Join(n.StateDir, "ipam"), "allocation", true, func(s string) bool { return s == "last" })
	list(filepath.Join(n.StateDir, "endpoints"), "endpoint record", true, none)
	list(api.PendingReleaseDir(n.Socket), "pending release", false, none)
	entries, err := n.MapEntries()
	if err != nil {
		out = append(out, "maps unreadable: "+err.Error())
	}
	for m, c := range entries {
		if c > 0 {
			out = append(out, fmt.Sprintf("%d entries in map %s", c, m))
		}
	}
	return out
}

func (n *Node) cleanup() {
	n.StopAnetd()
	if n.NS != nil {
		n.NS.Close()
		_ = testutils.UnmountNS(n.NS)
	}
	if n.BPFRoot != "" {
		_ = unix.Unmount(n.BPFRoot, unix.MNT_DETACH)
	}
	if n.Dir != "" && strings.HasPrefix(filepath.Base(n.Dir), "anet-t-") {
		_ = os.RemoveAll(n.Dir)
	}
}

// ConflistWithVersion is the node's conflist with another cniVersion.
func (n *Node) ConflistWithVersion(v string) *libcni.NetworkConfigList {
	n.t.Helper()
	conf, err := cniconf.Render(cniconf.RenderOptions{CNIVersion: v, Name: "anet", Socket: n.Socket, BPFRoot: n.BPFRoot})
	if err != nil {
		n.t.Fatal(err)
	}
	list, err := libcni.ConfListFromBytes(conf)
	if err != nil {
		n.t.Fatal(err)
	}
	if list.CNIVersion != v {
		n.t.Fatalf("conflist version %s, want %s", list.CNIVersion, v)
	}
	return list
}

// AddWith runs ADD with a given conflist and returns the result as the
// plugin gave it (in the conflist's version).
func (n *Node) AddWith(list *libcni.NetworkConfigList, p *Pod) (types.Result, error) {
	var res types.Result
	err := n.cni(func(c *libcni.CNIConfig) error {
		var err error
		res, err = c.AddNetworkList(context.Background(), list, p.RuntimeConf())
		return err
	})
	return res, err
}

// CheckWith runs CHECK with a given conflist.
func (n *Node) CheckWith(list *libcni.NetworkConfigList, p *Pod) error {
	return n.cni(func(c *libcni.CNIConfig) error {
		return c.CheckNetworkList(context.Background(), list, p.RuntimeConf())
	})
}

// DelWith runs DEL with a given conflist.
func (n *Node) DelWith(list *libcni.NetworkConfigList, p *Pod) error {
	return n.cni(func(c *libcni.CNIConfig) error {
		return c.DelNetworkList(context.Background(), list, p.RuntimeConf())
	})
}

// PluginConf is the config a runtime gives the plugin on stdin for the
// node's conflist: its anet-cni entry with the list's name and cniVersion.
func (n *Node) PluginConf() []byte {
	n.t.Helper()
	list := n.Conflist()
	var m map[string]any
	if err := json.Unmarshal(list.Plugins[0].Bytes, &m); err != nil {
		n.t.Fatal(err)
	}
	m["name"], m["cniVersion"] = list.Name, list.CNIVersion
	b, err := json.Marshal(m)
	if err != nil {
		n.t.Fatal(err)
	}
	return b
}

// PluginCmd is the real anet-cni run for verb on p as a runtime runs it,
// in the node's netns (nsenter execs it: the PID is the plugin's), with
// extra environment.
func (n *Node) PluginCmd(verb string, p *Pod, env ...string) *exec.Cmd {
	cmd := n.NSEnter(filepath.Join(n.Bin, "anet-cni"))
	cmd.Env = append(append(os.Environ(), "CNI_COMMAND="+verb, "CNI_CONTAINERID="+p.ContainerID,
		"CNI_NETNS="+p.NS.Path(), "CNI_IFNAME="+p.IfName, "CNI_PATH="+n.Bin,
		// A trailing ";", as some runtimes send.
		"CNI_ARGS=K8S_POD_NAMESPACE=default;K8S_POD_NAME="+p.Name+";K8S_POD_UID=uid-"+p.Name+";"), env...)
	cmd.Stdin = bytes.NewReader(n.PluginConf())
	return cmd
}

// HeldAdd is an ADD of the real plugin that anetd holds at the end of one
// of its steps (testhook.HoldEnv), to look at the node mid-ADD or to kill
// the plugin there.
type HeldAdd struct {
	Step   string
	n      *Node
	cmd    *exec.Cmd
	stdout bytes.Buffer
	stderr *syncBuffer
	done   chan struct{}
	err    error
}

// HoldAdd restarts anetd so that it holds every ADD at step, starts ADD of
// p and returns once anetd waits there. Continue (or Kill, then Continue)
// lets it go on and brings anetd back to normal.
func (n *Node) HoldAdd(p *Pod, step string) *HeldAdd {
	n.t.Helper()
	n.StopAnetd()
	n.anetdEnv = []string{testhook.HoldEnv + "=" + step}
	n.StartAnetd()
	n.anetdEnv = nil
	h := &HeldAdd{Step: step, n: n, stderr: &syncBuffer{}, done: make(chan struct{})}
	h.cmd = n.PluginCmd("ADD", p)
	h.cmd.Stdout = &h.stdout
	h.cmd.Stderr = h.stderr
	if err := h.cmd.Start(); err != nil {
		n.t.Fatal(err)
	}
	go func() { h.err = h.cmd.Wait(); close(h.done) }()
	n.t.Cleanup(h.Kill)
	want := "anet-test-hold step=" + step + " "
	deadline := time.After(20 * time.Second)
	for !strings.Contains(n.Log(), want) {
		select {
		case <-h.done:
			n.t.Fatalf("ADD ended before step %s: %v\nstdout: %s\nstderr: %s\nanetd:\n%s", step, h.err, h.stdout.String(), h.stderr.String(), n.Log())
		case <-deadline:
			n.t.Fatalf("ADD not at step %s after 20s; anetd:\n%s", step, n.Log())
		case <-time.After(5 * time.Millisecond):
		}
	}
	return h
}

// Continue lets anetd go on with the held ADD, waits for the plugin and
// returns its error (nil on success) and stdout. anetd is then restarted
// without the hold.
func (h *HeldAdd) Continue() (string, error) {
	out, err := h.Release()
	h.Restart()
	return out, err
}

// Release lets anetd go on with the held ADD and waits for the plugin,
// leaving anetd running (with the hold still set for later ADDs): for
// looking at what the same anetd did, with no restart to clean up after
// it. Restart brings anetd back to normal.
func (h *HeldAdd) Release() (string, error) {
	h.n.mu.Lock()
	cmd := h.n.anetd
	h.n.mu.Unlock()
	if cmd != nil {
		_ = cmd.Process.Signal(syscall.SIGUSR1)
	}
	<-h.done
	if h.err != nil {
		return h.stdout.String(), fmt.Errorf("%w: %s%s", h.err, h.stdout.String(), h.stderr.String())
	}
	return h.stdout.String(), nil
}

// Restart restarts anetd without the hold.
func (h *HeldAdd) Restart() {
	h.n.StopAnetd()
	h.n.StartAnetd()
}

// Kill sends SIGKILL to the plugin of the held ADD and waits for it to die
// (anetd still holds the ADD).
func (h *HeldAdd) Kill() {
	select {
	case <-h.done:
		return
	default:
	}
	_ = h.cmd.Process.Kill()
	<-h.done
}

// ConflistNamed is the node's conflist under another network name (a
// second network that also uses anet-cni, with the same anetd).
func (n *Node) ConflistNamed(name string) *libcni.NetworkConfigList {
	n.t.Helper()
	conf, err := cniconf.Render(cniconf.RenderOptions{Name: name, Socket: n.Socket})
	if err != nil {
		n.t.Fatal(err)
	}
	list, err := libcni.ConfListFromBytes(conf)
	if err != nil {
		n.t.Fatal(err)
	}
	return list
}

// GCWith runs GC of a given conflist keeping the given pods' attachments.
func (n *Node) GCWith(list *libcni.NetworkConfigList, keep ...*Pod) error {
	args := &libcni.GCArgs{}
	for _, p := range keep {
		args.ValidAttachments = append(args.ValidAttachments, types.GCAttachment{ContainerID: p.ContainerID, IfName: p.IfName})
	}
	return n.cni(func(c *libcni.CNIConfig) error {
		return c.GCNetworkList(context.Background(), list, args)
	})
}
