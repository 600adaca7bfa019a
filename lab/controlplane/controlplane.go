//go:build linux

// Package controlplane runs a real Kubernetes control plane (etcd,
// kube-apiserver, kube-controller-manager, kube-scheduler) inside a network
// namespace, for the lab and for tests. Every process is started through
// `nsenter --net=<netns>` in a process group of its own, logs to
// <Dir>/logs/<component>.log, and has its PID recorded in <Dir>/pids so that
// a lab whose owner crashed can still be torn down (StopDir).
//
// Ports and flags are pinned here. etcd listens on 127.0.0.1 of the netns;
// the apiserver binds Config.Address:6443; kube-controller-manager and
// kube-scheduler serve their health on 127.0.0.1 (10257, 10259). Nothing
// resolves a name through the machine's DNS: the apiserver reaches kubelets
// by InternalIP only.
package controlplane

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
)

// Pinned ports (inside the control plane's netns).
const (
	APIServerPort     = 6443
	EtcdClientPort    = 2379
	EtcdPeerPort      = 2380
	ControllerMgrPort = 10257
	SchedulerPort     = 10259
)

// Component names, as used in PIDs, log file names and the pids file.
const (
	Etcd              = "etcd"
	APIServer         = "kube-apiserver"
	ControllerManager = "kube-controller-manager"
	Scheduler         = "kube-scheduler"
)

// startOrder is the order components start in; they stop in reverse.
var startOrder = []string{Etcd, APIServer, ControllerManager, Scheduler}

// StopGrace is how long Stop waits after SIGTERM before SIGKILL.
const StopGrace = 10 * time.Second

// apiserverGrace is the apiserver's: measured, kube-apiserver stops its
// controllers at once on SIGTERM and then waits in http.Server.Shutdown for
// its clients' watch streams (up to a minute). All its state is in etcd, so
// nothing is lost by not waiting that long.
const apiserverGrace = 3 * time.Second

func grace(component string) time.Duration {
	if component == APIServer {
		return apiserverGrace
	}
	return StopGrace
}

// Config describes a control plane.
type Config struct {
	NetnsPath   string   // every process runs in this netns (nsenter --net=<path>)
	Address     string   // IPv4 the apiserver binds and advertises; must exist in the netns
	Dir         string   // all state: etcd data, certs, tokens, keys, logs, kubeconfigs
	BinDir      string   // the Kubernetes binaries (scripts/k8s-binaries.sh)
	ServiceCIDR string   // default 10.96.0.0/16
	ClusterCIDR string   // default 10.244.0.0/16; nodes get /24s of it
	NodeNames   []string // a token per kubelet: user system:node:<name>, group system:nodes
	// AuditUsers: the apiserver writes every request of these users
	// (audit level Metadata: who, verb, resource, response code; no
	// bodies) as JSON lines to AuditLogPath. None: no audit log.
	AuditUsers []string
}

// ControlPlane is a running control plane.
type ControlPlane struct {
	AdminKubeconfig string // kubeconfig of a cluster admin (token auth, group system:masters)
	URL             string // https://Address:6443
	AdminToken      string // the admin's bearer token
	CAFile          string // the apiserver's self-signed certificate bundle (its CA)

	cfg        Config
	netns      ns.NetNS
	nodeTokens map[string]string

	mu     sync.Mutex
	procs  map[string]*proc
	closed bool
}

type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error // set before done closes
}

func (c *Config) defaults() error {
	if c.ServiceCIDR == "" {
		c.ServiceCIDR = "10.96.0.0/16"
	}
	if c.ClusterCIDR == "" {
		c.ClusterCIDR = "10.244.0.0/16"
	}
	if c.NetnsPath == "" || c.Dir == "" || c.BinDir == "" {
		return errors.New("controlplane: NetnsPath, Dir and BinDir are required")
	}
	ip, err := netip.ParseAddr(c.Address)
	if err != nil || !ip.Is4() {
		return fmt.Errorf("controlplane: Address %q is not an IPv4 address", c.Address)
	}
	for name, v := range map[string]string{"ServiceCIDR": c.ServiceCIDR, "ClusterCIDR": c.ClusterCIDR} {
		if p, err := netip.ParsePrefix(v); err != nil || !p.Addr().Is4() {
			return fmt.Errorf("controlplane: %s %q is not an IPv4 CIDR", name, v)
		}
	}
	for _, n := range append(startOrder, "nsenter") {
		if n == "nsenter" {
			if _, err := exec.LookPath("nsenter"); err != nil {
				return fmt.Errorf("controlplane: nsenter not found: %w", err)
			}
			continue
		}
		if _, err := os.Stat(filepath.Join(c.BinDir, n)); err != nil {
			return fmt.Errorf("controlplane: %w (build the binaries with scripts/k8s-binaries.sh)", err)
		}
	}
	return nil
}

func (c *ControlPlane) path(parts ...string) string {
	return filepath.Join(append([]string{c.cfg.Dir}, parts...)...)
}

// Start brings etcd, kube-apiserver, kube-controller-manager and
// kube-scheduler up and waits until the apiserver is ready, the two
// controllers answer their health checks and the default service account
// exists (so that pods can be created at once). On failure it stops what it
// started and returns an error with the tail of the failing component's log.
func Start(ctx context.Context, cfg Config) (*ControlPlane, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	netns, err := ns.GetNS(cfg.NetnsPath)
	if err != nil {
		return nil, fmt.Errorf("controlplane: opening netns: %w", err)
	}
	c := &ControlPlane{
		cfg:   cfg,
		netns: netns,
		URL:   "https://" + net.JoinHostPort(cfg.Address, strconv.Itoa(APIServerPort)),
		procs: map[string]*proc{},
	}
	c.AdminKubeconfig = c.path("admin.kubeconfig")
	c.CAFile = c.path("certs", "apiserver.crt")
	ok := false
	defer func() {
		if !ok {
			_ = c.Stop()
		}
	}()
	if err := c.prepare(); err != nil {
		return nil, err
	}
	if err := c.startEtcd(ctx); err != nil {
		return nil, err
	}
	if err := c.StartAPIServer(ctx); err != nil {
		return nil, err
	}
	if err := c.startControllers(ctx); err != nil {
		return nil, err
	}
	if err := c.waitDefaultServiceAccount(ctx); err != nil {
		return nil, err
	}
	ok = true
	return c, nil
}

// prepare writes keys, tokens and kubeconfigs (kept when they exist, so
// that a restart in the same Dir keeps its identities).
func (c *ControlPlane) prepare() error {
	for _, d := range []string{c.cfg.Dir, c.path("logs"), c.path("certs"), c.path("etcd")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	if err := writeServiceAccountKeys(c.path("sa.key"), c.path("sa.pub")); err != nil {
		return err
	}
	tokens, err := loadOrMakeTokens(c.path("tokens.json"), c.cfg.NodeNames)
	if err != nil {
		return err
	}
	c.AdminToken = tokens["admin"]
	c.nodeTokens = map[string]string{}
	var csv strings.Builder
	fmt.Fprintf(&csv, "%s,admin,admin,system:masters\n", c.AdminToken)
	for _, n := range c.cfg.NodeNames {
		t := tokens["node:"+n]
		c.nodeTokens[n] = t
		fmt.Fprintf(&csv, "%s,system:node:%s,system:node:%s,system:nodes\n", t, n, n)
	}
	if err := os.WriteFile(c.path("tokens.csv"), []byte(csv.String()), 0o600); err != nil {
		return err
	}
	if err := c.writeKubeconfig(c.AdminKubeconfig, "admin", c.AdminToken); err != nil {
		return err
	}
	if len(c.cfg.AuditUsers) > 0 {
		users, err := json.Marshal(c.cfg.AuditUsers)
		if err != nil {
			return err
		}
		policy := fmt.Sprintf(`apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  users: %s
- level: None
`, users)
		if err := os.WriteFile(c.path("audit-policy.yaml"), []byte(policy), 0o600); err != nil {
			return err
		}
	}
	for _, n := range c.cfg.NodeNames {
		if err := c.writeKubeconfig(c.NodeKubeconfig(n), "system:node:"+n, c.nodeTokens[n]); err != nil {
			return err
		}
	}
	return nil
}

func randToken() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func loadOrMakeTokens(path string, nodes []string) (map[string]string, error) {
	tokens := map[string]string{}
	if b, err := os.ReadFile(path); err == nil {
		_ = json.Unmarshal(b, &tokens)
	}
	changed := false
	for _, k := range append([]string{"admin"}, prefixed("node:", nodes)...) {
		if tokens[k] == "" {
			tokens[k] = randToken()
			changed = true
		}
	}
	if changed {
		b, _ := json.Marshal(tokens)
		if err := os.WriteFile(path, b, 0o600); err != nil {
			return nil, err
		}
	}
	return tokens, nil
}

func prefixed(p string, s []string) []string {
	out := make([]string, len(s))
	for i, v := range s {
		out[i] = p + v
	}
	return out
}

func writeServiceAccountKeys(keyPath, pubPath string) error {
	if _, err := os.Stat(keyPath); err == nil {
		if _, err := os.Stat(pubPath); err == nil {
			return nil
		}
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return fmt.Errorf("generating service account key: %w", err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return err
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600); err != nil {
		return err
	}
	return os.WriteFile(pubPath, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644)
}

// kubeconfig renders a token kubeconfig for the control plane's URL. The
// CA is the apiserver's self-signed bundle, by path: it is written by the
// apiserver when it first starts, and kept across restarts.
func (c *ControlPlane) writeKubeconfig(path, user, token string) error {
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: anet-lab
  cluster:
    server: %s
    certificate-authority: %s
users:
- name: %s
  user:
    token: %s
contexts:
- name: anet-lab
  context:
    cluster: anet-lab
    user: %s
current-context: anet-lab
`, c.URL, c.CAFile, strconv.Quote(user), token, strconv.Quote(user))
	return os.WriteFile(path, []byte(kc), 0o600)
}

// NodeKubeconfig is the path of the kubeconfig of a node's kubelet (token
// of user system:node:<node>, group system:nodes). The node must be one of
// Config.NodeNames.
func (c *ControlPlane) NodeKubeconfig(node string) string {
	return NodeKubeconfigPath(c.cfg.Dir, node)
}

// NodeKubeconfigPath is NodeKubeconfig of the control plane in dir.
func NodeKubeconfigPath(dir, node string) string {
	return filepath.Join(dir, "node-"+node+".kubeconfig")
}

// NodeToken is the bearer token of a node's kubelet.
func (c *ControlPlane) NodeToken(node string) string { return c.nodeTokens[node] }

// Dir is the control plane's state directory.
func (c *ControlPlane) Dir() string { return c.cfg.Dir }

// AuditLogPath is the apiserver's audit log (Config.AuditUsers) of the
// control plane in dir: one JSON audit.k8s.io/v1 Event per line.
func AuditLogPath(dir string) string { return filepath.Join(dir, "logs", "audit.log") }

// LogPath is the log file of a component.
func (c *ControlPlane) LogPath(component string) string {
	return c.path("logs", component+".log")
}

func (c *ControlPlane) startEtcd(ctx context.Context) error {
	client := fmt.Sprintf("http://127.0.0.1:%d", EtcdClientPort)
	peer := fmt.Sprintf("http://127.0.0.1:%d", EtcdPeerPort)
	if err := c.spawn(Etcd,
		"--name=anet-lab",
		"--data-dir="+c.path("etcd"),
		"--listen-client-urls="+client, "--advertise-client-urls="+client,
		"--listen-peer-urls="+peer, "--initial-advertise-peer-urls="+peer,
		"--initial-cluster=anet-lab="+peer,
		"--listen-metrics-urls=",
		// A lab's etcd holds nothing worth an fsync per write; on a
		// shared 2-core machine the fsyncs are what makes it slow.
		"--unsafe-no-fsync",
		"--log-level=warn",
	); err != nil {
		return err
	}
	return c.waitHealthy(ctx, Etcd, 60*time.Second, client+"/health", false)
}

// StartAPIServer starts kube-apiserver (again, after StopAPIServer) and waits
// for its /readyz.
func (c *ControlPlane) StartAPIServer(ctx context.Context) error {
	var audit []string
	if len(c.cfg.AuditUsers) > 0 {
		audit = []string{"--audit-policy-file=" + c.path("audit-policy.yaml"), "--audit-log-path=" + AuditLogPath(c.cfg.Dir),
			"--audit-log-format=json", "--audit-log-mode=blocking"}
	}
	if err := c.spawn(APIServer, append([]string{
		fmt.Sprintf("--etcd-servers=http://127.0.0.1:%d", EtcdClientPort),
		"--bind-address=" + c.cfg.Address, "--advertise-address=" + c.cfg.Address,
		"--secure-port=" + strconv.Itoa(APIServerPort),
		"--cert-dir=" + c.path("certs"),
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file=" + c.path("sa.pub"),
		"--service-account-signing-key-file=" + c.path("sa.key"),
		"--token-auth-file=" + c.path("tokens.csv"),
		"--authorization-mode=Node,RBAC",
		"--service-cluster-ip-range=" + c.cfg.ServiceCIDR,
		"--kubelet-preferred-address-types=InternalIP",
		"--allow-privileged=true",
		"--profiling=false",
	}, audit...)...); err != nil {
		return err
	}
	return c.waitHealthy(ctx, APIServer, 90*time.Second, c.URL+"/readyz", true)
}

// StopAPIServer stops kube-apiserver (SIGTERM, SIGKILL after 3 s);
// everything else keeps running.
func (c *ControlPlane) StopAPIServer() error { return c.stop(APIServer) }

func (c *ControlPlane) startControllers(ctx context.Context) error {
	kc := c.AdminKubeconfig
	if err := c.spawn(ControllerManager,
		"--kubeconfig="+kc, "--authentication-kubeconfig="+kc, "--authorization-kubeconfig="+kc,
		"--bind-address=127.0.0.1", "--secure-port="+strconv.Itoa(ControllerMgrPort),
		"--leader-elect=false",
		"--controllers=*",
		"--use-service-account-credentials=true",
		"--service-account-private-key-file="+c.path("sa.key"),
		"--root-ca-file="+c.CAFile,
		"--allocate-node-cidrs=true", "--cluster-cidr="+c.cfg.ClusterCIDR, "--node-cidr-mask-size=24",
		"--service-cluster-ip-range="+c.cfg.ServiceCIDR,
		"--profiling=false",
	); err != nil {
		return err
	}
	if err := c.spawn(Scheduler,
		"--kubeconfig="+kc, "--authentication-kubeconfig="+kc, "--authorization-kubeconfig="+kc,
		"--bind-address=127.0.0.1", "--secure-port="+strconv.Itoa(SchedulerPort),
		"--leader-elect=false",
		"--profiling=false",
	); err != nil {
		return err
	}
	if err := c.waitHealthy(ctx, ControllerManager, 60*time.Second, fmt.Sprintf("https://127.0.0.1:%d/healthz", ControllerMgrPort), false); err != nil {
		return err
	}
	return c.waitHealthy(ctx, Scheduler, 60*time.Second, fmt.Sprintf("https://127.0.0.1:%d/healthz", SchedulerPort), false)
}

func (c *ControlPlane) waitDefaultServiceAccount(ctx context.Context) error {
	return c.waitHealthy(ctx, ControllerManager, 60*time.Second, c.URL+"/api/v1/namespaces/default/serviceaccounts/default", true)
}

// spawn starts one component in the netns, in its own process group, with
// its output appended to its log file, and records its PID.
func (c *ControlPlane) spawn(name string, args ...string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return errors.New("controlplane: stopped")
	}
	if p := c.procs[name]; p != nil {
		select {
		case <-p.done:
		default:
			return fmt.Errorf("controlplane: %s is already running (pid %d)", name, p.cmd.Process.Pid)
		}
	}
	logf, err := os.OpenFile(c.LogPath(name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	fmt.Fprintf(logf, "==== %s starting %s\n", time.Now().Format(time.RFC3339), name)
	// nsenter execs the binary in place: the PID is the component's.
	cmd := exec.Command("nsenter", append([]string{"--net=" + c.cfg.NetnsPath, "--", filepath.Join(c.cfg.BinDir, name)}, args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = c.cfg.Dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	c.procs[name] = p
	return c.writePIDsLocked()
}

// pidRecord is one line of <Dir>/pids: what StopDir needs to kill a
// component, and to make sure the PID still is that component.
type pidRecord struct {
	Component string `json:"component"`
	PID       int    `json:"pid"`
	Exe       string `json:"exe"`
}

func (c *ControlPlane) writePIDsLocked() error {
	var recs []pidRecord
	for _, n := range startOrder {
		p := c.procs[n]
		if p == nil {
			continue
		}
		select {
		case <-p.done:
			continue
		default:
		}
		recs = append(recs, pidRecord{Component: n, PID: p.cmd.Process.Pid, Exe: filepath.Join(c.cfg.BinDir, n)})
	}
	b, err := json.MarshalIndent(recs, "", "  ")
	if err != nil {
		return err
	}
	tmp := c.path(".pids.tmp")
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, c.path("pids"))
}

// PIDs returns the PIDs of the running components.
func (c *ControlPlane) PIDs() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]int{}
	for n, p := range c.procs {
		select {
		case <-p.done:
		default:
			out[n] = p.cmd.Process.Pid
		}
	}
	return out
}

func (c *ControlPlane) stop(name string) error {
	c.mu.Lock()
	p := c.procs[name]
	c.mu.Unlock()
	if p == nil {
		return nil
	}
	terminate(p.cmd.Process.Pid, p.done, grace(name))
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.writePIDsLocked()
}

// terminate sends SIGTERM to a process group, and SIGKILL after grace.
func terminate(pid int, done <-chan struct{}, grace time.Duration) {
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(grace):
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		<-done
	}
	// Anything left in the group (there should be nothing).
	_ = syscall.Kill(-pid, syscall.SIGKILL)
}

// Stop stops every component (SIGTERM, then SIGKILL after StopGrace), in
// the reverse order of start. It is idempotent; state stays in Dir.
func (c *ControlPlane) Stop() error {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	var errs []error
	for _, n := range slices.Backward(startOrder) {
		if err := c.stop(n); err != nil {
			errs = append(errs, err)
		}
	}
	c.mu.Lock()
	if c.netns != nil {
		_ = c.netns.Close()
		c.netns = nil
	}
	c.mu.Unlock()
	return errors.Join(errs...)
}

// StopDir kills, by the PIDs recorded in dir/pids, the components of a
// control plane whose owner is gone (a crashed lab). A PID is only
// signalled while it still runs the recorded binary. It is idempotent.
func StopDir(dir string) error {
	b, err := os.ReadFile(filepath.Join(dir, "pids"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var recs []pidRecord
	if err := json.Unmarshal(b, &recs); err != nil {
		return fmt.Errorf("reading %s/pids: %w", dir, err)
	}
	// ours: the PID still runs the recorded binary (not a reused PID).
	ours := func(r pidRecord) bool {
		exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", r.PID))
		return err == nil && strings.TrimSuffix(exe, " (deleted)") == r.Exe && running(r.PID)
	}
	var live []pidRecord
	for _, r := range slices.Backward(recs) {
		if ours(r) {
			_ = syscall.Kill(-r.PID, syscall.SIGTERM)
			_ = syscall.Kill(r.PID, syscall.SIGTERM)
			live = append(live, r)
		}
	}
	start := time.Now()
	for _, r := range live {
		for running(r.PID) && time.Since(start) < grace(r.Component) {
			time.Sleep(100 * time.Millisecond)
		}
		if running(r.PID) {
			_ = syscall.Kill(-r.PID, syscall.SIGKILL)
			_ = syscall.Kill(r.PID, syscall.SIGKILL)
		}
	}
	for _, r := range live {
		for i := 0; running(r.PID) && i < 100; i++ {
			time.Sleep(100 * time.Millisecond)
		}
		if running(r.PID) {
			return fmt.Errorf("controlplane: %s (pid %d) survived SIGKILL", r.Component, r.PID)
		}
	}
	return os.Remove(filepath.Join(dir, "pids"))
}

// running reports whether pid is a process that has not finished exiting
// (a zombie waiting for its parent counts as gone).
func running(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// "pid (comm) state ...": the state follows the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return false
	}
	return s[i+2] != 'Z' && s[i+2] != 'X'
}

// Dial opens a connection from inside the control plane's netns: a socket
// stays in the netns it was made in. Use it as rest.Config.Dial (or an
// http.Transport's DialContext) to reach the apiserver from a process that
// lives elsewhere.
func (c *ControlPlane) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	return DialIn(c.cfg.NetnsPath)(ctx, network, addr)
}

// DialIn returns a dial function that makes its sockets in the netns at path.
func DialIn(netnsPath string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		netns, err := ns.GetNS(netnsPath)
		if err != nil {
			return nil, err
		}
		defer netns.Close()
		var conn net.Conn
		err = netns.Do(func(ns.NetNS) error {
			var d net.Dialer
			var err error
			conn, err = d.DialContext(ctx, network, addr)
			return err
		})
		return conn, err
	}
}

// HTTPClient is an HTTP client whose connections are made in the control
// plane's netns, trusting the apiserver's certificate (when written).
func (c *ControlPlane) HTTPClient() *http.Client {
	return c.httpClient(false)
}

func (c *ControlPlane) httpClient(insecure bool) *http.Client {
	tlsConf := &tls.Config{InsecureSkipVerify: insecure} //nolint:gosec // only for local health checks
	if !insecure {
		if pem, err := os.ReadFile(c.CAFile); err == nil {
			pool := x509.NewCertPool()
			pool.AppendCertsFromPEM(pem)
			tlsConf.RootCAs = pool
		}
	}
	return &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{
			DialContext:       c.Dial,
			TLSClientConfig:   tlsConf,
			DisableKeepAlives: true,
		},
	}
}

// waitHealthy polls url (from inside the netns) until it answers 200,
// failing early when the component exits. withToken adds the admin token
// and verifies the apiserver's certificate.
func (c *ControlPlane) waitHealthy(ctx context.Context, name string, timeout time.Duration, url string, apiserver bool) error {
	c.mu.Lock()
	p := c.procs[name]
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last string
	for {
		var hc *http.Client
		if apiserver {
			hc = c.httpClient(false)
		} else {
			hc = c.httpClient(true)
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if apiserver {
			req.Header.Set("Authorization", "Bearer "+c.AdminToken)
		}
		resp, err := hc.Do(req)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
		} else {
			last = err.Error()
		}
		select {
		case <-p.done:
			return fmt.Errorf("controlplane: %s exited (%v) before %s answered; log tail:\n%s", name, p.err, url, c.tail(name))
		case <-ctx.Done():
			return fmt.Errorf("controlplane: %s not healthy after %s (%s: %s); log tail:\n%s", name, timeout, url, last, c.tail(name))
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// tail returns the last lines of a component's log.
func (c *ControlPlane) tail(name string) string {
	b, err := os.ReadFile(c.LogPath(name))
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	return strings.Join(lines, "\n")
}
