// anetd is anet's node daemon: it owns the eBPF programs and maps of its
// node, keeps the endpoints of the node's pods, and serves the socket API
// that anet-cni and anetctl use.
//
// With a Kubernetes API (--kubeconfig, or in-cluster when
// KUBERNETES_SERVICE_HOST is set) it takes the pod CIDR from its Node,
// routes the other nodes' pod CIDRs, collects endpoints whose pod is gone,
// sets the Node's NetworkUnavailable=False and, as the node's service
// proxy (--enable-services), programs every Service into the datapath's
// service maps and answers kube-proxy's health endpoints, and enforces
// NetworkPolicy (identities from SecurityIdentity objects, the pod
// programs' policy maps). Without one
// (standalone) it runs from --pod-cidr alone.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/anet-dev/anet/daemon/api"
	"github.com/anet-dev/anet/daemon/apiserver"
	"github.com/anet-dev/anet/daemon/datapath"
	"github.com/anet-dev/anet/daemon/endpoint"
	"github.com/anet-dev/anet/daemon/health"
	"github.com/anet-dev/anet/daemon/identity"
	"github.com/anet-dev/anet/daemon/ipam"
	"github.com/anet-dev/anet/daemon/k8s"
	"github.com/anet-dev/anet/daemon/kubeproxy"
	"github.com/anet-dev/anet/daemon/metrics"
	"github.com/anet-dev/anet/daemon/policy"
	"github.com/anet-dev/anet/daemon/proxyhealth"
	"github.com/anet-dev/anet/daemon/routing"
	"github.com/anet-dev/anet/daemon/service"
	"github.com/anet-dev/anet/daemon/service/lb"
)

// testHoldEnv, set to 1, holds anetd before it restores its endpoints, its
// socket serving and not ready, until SIGUSR1: for tests of what the plugin
// and anetctl do meanwhile. Never set it on a real node.
const testHoldEnv = "ANETD_TEST_HOLD_RESTORE"

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

type config struct {
	bpfRoot    string
	stateDir   string
	socket     string
	nodeName   string
	podCIDR    string
	logLevel   string
	kubeconfig string
	healthAddr string
	gcGrace    time.Duration
	attach     string
	// Prometheus metrics (daemon/metrics), served on /metrics.
	metricsAddr string

	// The service proxy (with an API).
	enableServices bool
	cgroupRoot     string
	healthzAddr    string // kube-proxy's health endpoint
	// Sizes of the service maps (the datapath's load options) and the
	// reconciler's ID ranges.
	lbServicesMax  uint32
	lbBackendsMax  uint32
	purgeKubeProxy bool
	// The per-packet translation on the underlay device(s).
	devices          []string
	routingMode      datapath.RoutingMode
	snatMin, snatMax uint16

	// NetworkPolicy (with an API).
	enablePolicy bool
	identityGC   time.Duration
	policyWait   time.Duration
}

func parseFlags(args []string) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("anetd", flag.ContinueOnError)
	host, _ := os.Hostname()
	fs.StringVar(&c.bpfRoot, "bpf-root", "/sys/fs/bpf/anet", "bpffs directory for anet's pinned programs, maps and links")
	fs.StringVar(&c.stateDir, "state-dir", "/var/lib/anet", "directory for persistent state (allocations, endpoints)")
	fs.StringVar(&c.socket, "socket", api.DefaultSocket, "unix socket of the API")
	fs.StringVar(&c.nodeName, "node-name", host, "name of this node")
	fs.StringVar(&c.podCIDR, "pod-cidr", "", "IPv4 CIDR of this node's pods, e.g. 10.244.1.0/24")
	fs.StringVar(&c.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&c.kubeconfig, "kubeconfig", "", "kubeconfig of the Kubernetes API; without it, the in-cluster config when KUBERNETES_SERVICE_HOST is set, else standalone (no API)")
	fs.StringVar(&c.healthAddr, "health-addr", ":9876", "address of the HTTP /healthz and /readyz endpoints (empty: off)")
	fs.StringVar(&c.metricsAddr, "metrics-addr", ":9090", "address of the Prometheus metrics, served on /metrics (empty: off)")
	fs.DurationVar(&c.gcGrace, "endpoint-gc-grace", k8s.DefaultGCGrace, "with an API: how old an endpoint must be before it is collected when its pod is gone")
	fs.StringVar(&c.attach, "endpoint-attach", datapath.ModeTC, "how the programs hang on a new pod's veth: tc (clsact filters; an ADD takes about 0.4 ms for it) or tcx (TCX links; each attach waits for an RCU grace period, about 10 ms, twice per pod)")
	fs.BoolVar(&c.enableServices, "enable-services", true, "with an API: serve Services (ClusterIP, NodePort, LoadBalancer, ExternalIPs) in place of kube-proxy")
	fs.StringVar(&c.cgroupRoot, "cgroup-root", "/sys/fs/cgroup", "cgroup v2 directory where the socket-level service hooks attach (they apply to every process below it); when it is a cgroup v1 layout, its unified/ subdirectory is used if that is cgroup v2")
	fs.StringVar(&c.healthzAddr, "healthz-bind-address", "0.0.0.0:10256", "with services: address of kube-proxy's health endpoint (/healthz, /livez), for load balancers and tools that probe it (empty: off)")
	fs.BoolVar(&c.purgeKubeProxy, "purge-kube-proxy-rules", false, "remove the iptables chains and nftables table a kube-proxy left in the node (kubelet's chains stay); without it they are only reported. Stop kube-proxy first, or it writes them again")
	fs.BoolVar(&c.enablePolicy, "enable-network-policy", true, "with an API: enforce NetworkPolicies (off only for tests of other things: pods are then open)")
	fs.DurationVar(&c.policyWait, "policy-wait-on-add", 3*time.Second, "with network policy: how long a CNI ADD waits, when a NetworkPolicy is in the pod's namespace, for the pod's policy to be written, so that a pod a policy isolates is isolated from its first packet (past it the ADD succeeds and the pod is open until its policy is written; 0: no wait)")
	fs.DurationVar(&c.identityGC, "identity-gc-interval", 5*time.Minute, "with network policy: how often this anetd collects SecurityIdentities no pod uses (0: never)")
	routingMode := fs.String("routing-mode", "native", "how pods' packets reach pods of other nodes: native (routes to the other nodes' pod CIDRs, through the host stack) or tunnel (a Geneve overlay built by anet's programs: no routes, no tunnel device; needs the service datapath, --enable-services)")
	devices := fs.String("devices", "", "with services: the underlay device(s) that carry NodePort, ExternalIP and LoadBalancer traffic from outside, comma-separated (default: the device holding the node's InternalIP)")
	snatRange := fs.String("snat-port-range", "61000-65535", "with services: source ports for connections from outside that a backend on another node serves (SNAT to the node's address); keep it outside net.ipv4.ip_local_port_range and the NodePort range")
	servicesMax := fs.Uint("lb-services-max", service.DefaultMaxFrontends, "size of the service frontend map (frontends: address, port and protocol, of every Service)")
	backendsMax := fs.Uint("lb-backends-max", service.DefaultMaxBackends, "size of the service backend map (distinct backend addresses, ports and protocols)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	for name, v := range map[string]uint{"--lb-services-max": *servicesMax, "--lb-backends-max": *backendsMax} {
		if v == 0 || v > 1<<24 {
			return nil, fmt.Errorf("%s must be between 1 and %d, got %d", name, 1<<24, v)
		}
	}
	c.lbServicesMax, c.lbBackendsMax = uint32(*servicesMax), uint32(*backendsMax)
	if m, err := datapath.ParseRoutingMode(*routingMode); err != nil {
		return nil, err
	} else {
		c.routingMode = m
	}
	if *devices != "" {
		for _, d := range strings.Split(*devices, ",") {
			if d = strings.TrimSpace(d); d != "" {
				c.devices = append(c.devices, d)
			}
		}
	}
	var err error
	if c.snatMin, c.snatMax, err = parsePortRange(*snatRange); err != nil {
		return nil, fmt.Errorf("--snat-port-range: %w", err)
	}
	if !filepath.IsAbs(c.cgroupRoot) {
		return nil, fmt.Errorf("--cgroup-root must be an absolute path, got %q", c.cgroupRoot)
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	for name, v := range map[string]string{"--bpf-root": c.bpfRoot, "--state-dir": c.stateDir, "--socket": c.socket} {
		if !filepath.IsAbs(v) {
			return nil, fmt.Errorf("%s must be an absolute path, got %q", name, v)
		}
	}
	if c.nodeName == "" {
		return nil, errors.New("--node-name is required (the hostname is empty)")
	}
	if c.podCIDR == "" && c.kubeconfig == "" && os.Getenv("KUBERNETES_SERVICE_HOST") == "" {
		return nil, errors.New("--pod-cidr is required without a Kubernetes API (--kubeconfig, or in-cluster)")
	}
	if c.attach != datapath.ModeTC && c.attach != datapath.ModeTCX {
		return nil, fmt.Errorf("--endpoint-attach must be %s or %s, got %q", datapath.ModeTC, datapath.ModeTCX, c.attach)
	}
	if c.gcGrace < 0 {
		return nil, errors.New("--endpoint-gc-grace must not be negative")
	}
	return c, nil
}

func main() {
	cfg, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "anetd: %v\n", err)
		os.Exit(2)
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.logLevel)); err != nil {
		fmt.Fprintf(os.Stderr, "anetd: --log-level: %v\n", err)
		os.Exit(2)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if err := run(cfg, log); err != nil {
		log.Error("anetd failed", "err", err)
		os.Exit(1)
	}
}

func run(cfg *config, log *slog.Logger) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	hstate := health.NewState("starting")
	if cfg.healthAddr != "" {
		hs, err := health.Listen(cfg.healthAddr, hstate, log)
		if err != nil {
			return err
		}
		defer hs.Stop()
	}
	// Collectors are added as their parts start; a scrape reads the maps
	// then (daemon/metrics).
	mets := metrics.New()
	if cfg.metricsAddr != "" {
		ms, err := health.ListenHTTP("metrics server", cfg.metricsAddr, mets.Handler(), log)
		if err != nil {
			return err
		}
		defer ms.Stop()
	}

	restCfg, err := k8s.RESTConfig(cfg.kubeconfig)
	if err != nil {
		return err
	}
	var kc *k8s.Client
	var node k8s.NodeInfo
	podCIDR := cfg.podCIDR
	if restCfg != nil {
		if kc, err = k8s.New(restCfg, cfg.nodeName, "anetd/"+version, log); err != nil {
			return err
		}
		log.Info("using the Kubernetes API", "server", restCfg.Host, "node", cfg.nodeName)
		hstate.SetReason("waiting for this node's pod CIDR")
		nodeFile := filepath.Join(cfg.stateDir, "node.json")
		info, err := kc.WaitNode(ctx, readNodeCache(nodeFile), 10*time.Second)
		if ctx.Err() != nil {
			log.Info("stopped while waiting for the pod CIDR")
			return nil
		}
		if err != nil {
			return err
		}
		if cfg.podCIDR != "" {
			if p, err := netip.ParsePrefix(cfg.podCIDR); err != nil || p.Masked() != info.PodCIDR {
				return fmt.Errorf("--pod-cidr %s disagrees with node %s's spec.podCIDRs %s (drop the flag: the API decides)", cfg.podCIDR, cfg.nodeName, info.PodCIDR)
			}
		}
		podCIDR = info.PodCIDR.String()
		if !info.Cached {
			if err := writeNodeCache(nodeFile, info); err != nil {
				log.Warn("recording the node's pod CIDR", "err", err)
			}
		}
		node = info
		log.Info("node", "node", cfg.nodeName, "podCIDR", info.PodCIDR, "internalIPs", info.InternalIPs, "fromLastRun", info.Cached)
		// Traffic to another node's pods leaves through this node's stack
		// (pod veth -> host routes -> underlay), so the node must forward.
		// The same-node eBPF path does not need it.
		// In tunnel mode anet's programs carry those packets and the
		// node forwards nothing.
		if cfg.routingMode != datapath.RoutingTunnel {
			log.Info("enabling IP forwarding (net.ipv4.ip_forward=1) for native routing between nodes")
			if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
				return fmt.Errorf("enabling IP forwarding: %w", err)
			}
		}
	}

	cidr, err := netip.ParsePrefix(podCIDR)
	if err != nil {
		return fmt.Errorf("--pod-cidr: %w", err)
	}
	alloc, err := ipam.New(filepath.Join(cfg.stateDir, "ipam"), cidr, log)
	if err != nil {
		return fmt.Errorf("--pod-cidr: %w", err)
	}
	if err := datapath.MountBPFFS(cfg.bpfRoot, log); err != nil {
		return err
	}
	// Load, fill, Activate: maps whose layout changed since the last run
	// are rebuilt (the endpoint maps by Restore, below) before any new
	// program is attached.
	// Beside another service proxy (services off), the pod programs send
	// packets of connections netfilter translated through the host stack.
	dp, err := datapath.LoadWith(cfg.bpfRoot, datapath.Options{
		ServiceMapSize: cfg.lbServicesMax, RevNatMapSize: cfg.lbServicesMax, BackendMapSize: cfg.lbBackendsMax,
		HostNAT: kc != nil && !cfg.enableServices, RoutingMode: cfg.routingMode,
	}, log)
	if err != nil {
		return err
	}
	dp.EndpointAttach = cfg.attach
	defer dp.Close()
	mets.AddDatapath(dp)
	eps, err := endpoint.New(filepath.Join(cfg.stateDir, "endpoints"), alloc, dp, nodeDevices{datapath.Layout{Root: cfg.bpfRoot}}, log)
	if err != nil {
		return err
	}
	// Records go into files made ahead of time (an ADD then waits for a
	// data write, not a journal commit).
	if err := eps.UseReadyFiles(filepath.Join(cfg.stateDir, "endpoints.ready")); err != nil {
		return err
	}
	defer eps.Close()
	mets.AddEndpoints(eps.Count)
	pending := endpoint.Pending{Releases: api.PendingReleaseDir(cfg.socket)}

	var ready atomic.Bool
	started := time.Now().UTC()
	status := func() api.Status {
		st := api.Status{
			Ready: ready.Load(), NodeName: cfg.nodeName, PodCIDR: alloc.CIDR(), Gateway: alloc.Gateway(),
			BPFRoot: cfg.bpfRoot, Endpoints: eps.Count(), Allocated: len(alloc.List()), Capacity: alloc.Capacity(),
			Version: version, Started: started,
		}
		if !st.Ready {
			st.Reason = "restoring endpoints"
		}
		return st
	}
	ln, err := apiserver.Listen(cfg.socket)
	if err != nil {
		return err
	}
	srv := apiserver.New(eps, status, log)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		_ = os.Remove(cfg.socket)
	}()

	hstate.SetReason("restoring endpoints")
	if os.Getenv(testHoldEnv) == "1" {
		// Tests only: serve "not ready" until SIGUSR1.
		held := make(chan os.Signal, 1)
		signal.Notify(held, syscall.SIGUSR1)
		log.Warn("test hold: not ready until SIGUSR1", "env", testHoldEnv)
		select {
		case <-held:
			signal.Stop(held)
		case <-ctx.Done():
			return nil
		}
	}
	if err := eps.Restore(pending); err != nil {
		return fmt.Errorf("restoring endpoints: %w", err)
	}
	if err := dp.Activate(); err != nil {
		return fmt.Errorf("activating the datapath: %w", err)
	}
	if err := addGatewayAddress(alloc.Gateway()); err != nil {
		return err
	}
	if kc != nil {
		mtu, err := podMTU(cfg, node)
		if err != nil {
			return fmt.Errorf("the pod MTU in tunnel mode: %w", err)
		}
		eps.SetPodMTU(mtu)
		if mtu != 0 {
			log.Info("pod MTU", "mtu", mtu)
		}
	}
	ready.Store(true) // the socket API serves CNI from here on
	if kc != nil {
		// A kube-proxy needs the API too: a standalone anetd has none
		// to look for.
		go legacyKubeProxy(ctx, cfg.purgeKubeProxy, log)
	}

	if kc != nil {
		native, err := routing.NewTable(log)
		if err != nil {
			return err
		}
		defer native.Close()
		var table k8s.RouteTable = native
		if cfg.routingMode == datapath.RoutingTunnel {
			if !cfg.enableServices {
				return errors.New("--routing-mode tunnel needs the service datapath (--enable-services): the underlay programs decapsulate")
			}
			table = &tunnelTable{dp: dp, native: native, log: log}
		}
		svcs, err := startServices(ctx, cfg, dp, kc, node, srv, eps.Netns, mets, log)
		if err != nil {
			return err
		}
		if cfg.enablePolicy {
			if err := startPolicy(ctx, cfg, restCfg, dp, kc, eps, srv, mets, log); err != nil {
				return err
			}
		} else {
			log.Warn("network policy off (--enable-network-policy=false): every pod is open")
		}
		kc.Start(ctx)
		go kc.CheckPodCIDR(ctx, alloc.CIDR())
		go kc.WatchAPI(ctx, 5*time.Second)
		routesSynced := make(chan struct{})
		go kc.SyncRoutes(ctx, table, func() { close(routesSynced) })
		// A short interval also catches endpoints registered after the
		// informer saw their pod.
		go kc.ReconcileEndpoints(ctx, eps, cfg.gcGrace, min(max(cfg.gcGrace/2, time.Second), 5*time.Second))
		hstate.SetReason("waiting for the informers to list")
		if !kc.WaitForSync(ctx) {
			log.Info("stopped while waiting for the informers")
			return nil
		}
		select {
		case <-routesSynced:
		case <-ctx.Done():
			return nil
		}
		if svcs != nil {
			hstate.SetReason("programming services")
			select {
			case <-svcs.InSync():
			case <-ctx.Done():
				return nil
			}
		}
		go kc.KeepNetworkAvailable(ctx)
	} else if cfg.enableServices {
		log.Info("no Kubernetes API: no Services to serve")
	}
	hstate.SetReady()
	log.Info("anetd ready", "node", cfg.nodeName, "podCIDR", alloc.CIDR(), "endpoints", eps.Count(),
		"bpfRoot", cfg.bpfRoot, "socket", cfg.socket, "api", kc != nil, "version", version)

	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		select {
		case err := <-errc:
			return err
		case <-tick.C:
			if err := eps.ApplyPending(pending); err != nil {
				log.Warn("applying pending releases", "err", err)
			}
		case <-ctx.Done():
			log.Info("shutting down; pinned programs and maps stay and keep forwarding; routes stay")
			return nil
		}
	}
}

// The service proxy's connection to the eBPF datapath: one place, here.
// Tests of the wiring alone replace serviceMaps (see testServiceMapEnv).
var (
	serviceMaps = func(dp *datapath.Datapath, cfg *config) (service.Map, error) {
		return dp.ServiceMaps()
	}
	attachSocketLB = func(dp *datapath.Datapath, cgroupRoot string) error {
		return dp.AttachSocketLB(cgroupRoot)
	}
)

// testServiceMapEnv, set to "memory", gives the service reconciler an
// in-memory map when no datapath map is connected: for tests of the
// service wiring (informers, reconciler, API, health endpoints) through
// the real anetd. Never set it on a real node: nothing is served.
const testServiceMapEnv = "ANETD_TEST_SERVICE_MAP"

// startServices starts anetd's service proxy: the reconciler fed by the
// Service and EndpointSlice events, kube-proxy's health endpoints and the
// healthCheckNodePort servers. It returns nil when services are off or no
// service map is connected.
func startServices(ctx context.Context, cfg *config, dp *datapath.Datapath, kc *k8s.Client, node k8s.NodeInfo,
	srv *apiserver.Server, podNetns func() []datapath.NetnsRef, mets *metrics.Metrics, log *slog.Logger) (*service.Reconciler, error) {
	if !cfg.enableServices {
		log.Info("services off (--enable-services=false): another proxy must serve them")
		return nil, nil
	}
	var m service.Map
	var term *datapath.SocketTerminator
	if os.Getenv(testServiceMapEnv) == "memory" {
		// Nothing reaches the datapath: no hooks, no underlay programs.
		log.Warn("test only: services programmed into an in-memory map, not the datapath", "env", testServiceMapEnv)
		m = service.NewMemMap()
	} else {
		var err error
		if m, err = serviceMaps(dp, cfg); err != nil {
			return nil, fmt.Errorf("service maps: %w", err)
		}
		cgroupRoot, err := resolveCgroupRoot(cfg.cgroupRoot)
		if err != nil {
			return nil, err
		}
		if err := attachSocketLB(dp, cgroupRoot); err != nil {
			return nil, fmt.Errorf("attaching the socket-level service hooks at %s: %w", cgroupRoot, err)
		}
		log.Info("socket-level service hooks attached", "cgroupRoot", cgroupRoot)
		// A UDP socket the hooks connected to a backend keeps sending
		// to it after it left: the terminator destroys such sockets in
		// the pods' namespaces and the node's (this goroutine's: the
		// main one, never moved).
		if term, err = dp.NewSocketTerminator(podNetns, log.With("from", "sockterm")); err != nil {
			log.Warn("connected UDP sockets stay connected to backends that left their Service", "err", err)
			term = nil
		} else {
			go term.Run(ctx)
		}
		if err := startUnderlay(ctx, cfg, dp, node, log); err != nil {
			return nil, err
		}
	}

	svcLog := log.With("from", "service")
	ph := proxyhealth.New(proxyhealth.DefaultTimeout, kc.Node)
	if cfg.healthzAddr != "" {
		go serveProxyHealth(ctx, ph, cfg.healthzAddr, svcLog)
	}
	hcs := proxyhealth.NewServices(func() bool { return ph.Health().Healthy }, svcLog)
	go hcs.Run(ctx, 5*time.Second)
	rec := service.NewReconciler(m, service.Node{Name: cfg.nodeName, Addrs: node.InternalIPs}, service.Options{
		MaxFrontends: cfg.lbServicesMax, MaxBackends: cfg.lbBackendsMax, Health: ph, HealthChecks: hcs,
		Terminator: terminator(term), Latency: mets.Latency("service"),
	}, svcLog)
	mets.AddServices(&rec.Counters)
	synced, _, err := kc.OnServiceChange(rec.Enqueue)
	if err != nil {
		return nil, err
	}
	if _, err := kc.OnNodeChange(func(i k8s.NodeInfo) {
		rec.SetNode(service.Node{Name: cfg.nodeName, Addrs: i.InternalIPs})
	}); err != nil {
		return nil, err
	}
	listed := make(chan struct{})
	go func() {
		if cache.WaitForCacheSync(ctx.Done(), synced) {
			close(listed)
		}
	}()
	go rec.Run(ctx, kc, listed)
	srv.SetServices(rec.Snapshot)
	log.Info("service proxy started", "node", cfg.nodeName, "nodeAddresses", node.InternalIPs,
		"lbServicesMax", cfg.lbServicesMax, "lbBackendsMax", cfg.lbBackendsMax, "healthz", cfg.healthzAddr)
	return rec, nil
}

// startPolicy starts the NetworkPolicy reconciler. The identity allocator
// needs the API (the SecurityIdentity CRD is applied, then its informer
// lists), so all of that runs in the background: the node serves CNI and
// Services meanwhile, and pods stay as the pinned maps have them.
func startPolicy(ctx context.Context, cfg *config, restCfg *rest.Config, dp *datapath.Datapath, kc *k8s.Client,
	eps *endpoint.Manager, srv *apiserver.Server, mets *metrics.Metrics, log *slog.Logger) error {
	plog := log.With("from", "policy")
	dyn, err := dynamic.NewForConfig(restCfg)
	if err != nil {
		return fmt.Errorf("policy: %w", err)
	}
	events, _ := kc.EventRecorder("anetd")
	report := func(p policy.Problem) {
		ns, name, _ := strings.Cut(p.Policy, "/")
		np, err := kc.NetworkPolicy(ns, name)
		if err != nil {
			return // gone meanwhile
		}
		events.Eventf(np, corev1.EventTypeWarning, "PolicyNotEnforced", "%s: %s", p.Field, p.Why)
	}
	rec := policy.NewReconciler(policy.Config{
		Node: cfg.nodeName, Source: kc, Datapath: policyMaps{dp}, Endpoints: eps.PodIfindexes,
		Report: report, Gateway: ipam.Gateway, Log: plog, Latency: mets.Latency("policy"),
	})
	mets.AddIdentities(rec.IdentityCounts)
	synced, _, err := kc.OnPolicyChange(rec.Enqueue)
	if err != nil {
		return err
	}
	eps.SetOnChange(rec.Enqueue)
	srv.SetPolicy(rec)
	srv.SetPolicyWait(cfg.policyWait)
	go func() {
		for {
			err := identity.ApplyCRD(ctx, dyn)
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return
			}
			plog.Warn("installing the SecurityIdentity CRD; retrying", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(5 * time.Second):
			}
		}
		alloc, err := identity.NewCRD(ctx, identity.CRDConfig{Client: dyn, Log: plog})
		if err != nil {
			if ctx.Err() == nil {
				plog.Error("network policy not enforced: starting the identity allocator", "err", err)
			}
			return
		}
		rec.SetAllocator(alloc)
		if cfg.identityGC > 0 {
			gc := &identity.Collector{Alloc: alloc, Kube: kc.Clientset()}
			go gc.Loop(ctx, cfg.identityGC)
		}
		listed := make(chan struct{})
		go func() {
			if cache.WaitForCacheSync(ctx.Done(), synced) {
				close(listed)
			}
		}()
		rec.Run(ctx, listed)
	}()
	plog.Info("network policy reconciler starting")
	return nil
}

// policyMaps is the datapath's policy maps as the reconciler sees them.
type policyMaps struct{ dp *datapath.Datapath }

func toPolicyRules(rs []policy.Rule) []datapath.PolicyRule {
	out := make([]datapath.PolicyRule, len(rs))
	for i, r := range rs {
		out[i] = datapath.PolicyRule(r)
	}
	return out
}

func (m policyMaps) SetEndpointPolicy(ifindex uint32, ingressEnforced, egressEnforced bool, ingress, egress []policy.Rule) error {
	return m.dp.SetEndpointPolicy(ifindex, ingressEnforced, egressEnforced, toPolicyRules(ingress), toPolicyRules(egress))
}
func (m policyMaps) DeleteEndpointPolicy(ifindex uint32) error {
	return m.dp.DeleteEndpointPolicy(ifindex)
}
func (m policyMaps) SetIPCache(p netip.Prefix, id uint32) error { return m.dp.SetIPCache(p, id) }
func (m policyMaps) DeleteIPCache(p netip.Prefix) error         { return m.dp.DeleteIPCache(p) }
func (m policyMaps) IPCache() (map[netip.Prefix]uint32, error)  { return m.dp.IPCache() }
func (m policyMaps) PolicyEndpoints() ([]uint32, error)         { return m.dp.PolicyEndpoints() }

// terminator is t as the reconciler's option: nil stays an untyped nil.
func terminator(t *datapath.SocketTerminator) lb.SocketTerminator {
	if t == nil {
		return nil
	}
	return t
}

// serveProxyHealth serves kube-proxy's health endpoint, retrying the bind
// every 5 s while the address is taken (a kube-proxy still running), as
// kube-proxy does.
func serveProxyHealth(ctx context.Context, ph *proxyhealth.Server, addr string, log *slog.Logger) {
	logged := false
	for {
		l, err := ph.ListenProxy(addr, log)
		if err == nil {
			log.Info("kube-proxy health endpoint serving", "addr", addr)
			<-ctx.Done()
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_ = l.Shutdown(sctx)
			cancel()
			return
		}
		if !logged {
			log.Error("cannot serve kube-proxy's health endpoint; retrying every 5s", "err", err)
			logged = true
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(5 * time.Second):
		}
	}
}

// legacyKubeProxy reports the rules a kube-proxy left in the node and,
// with purge, removes them.
func legacyKubeProxy(ctx context.Context, purge bool, log *slog.Logger) {
	found, err := kubeproxy.Find(ctx)
	if err != nil {
		log.Warn("looking for a kube-proxy's rules", "err", err)
	}
	if len(found.Skipped) > 0 {
		log.Debug("cannot look for a kube-proxy's rules with tools that are not installed", "missing", found.Skipped)
	}
	if found.Empty() {
		log.Debug("no kube-proxy rules in this node")
		return
	}
	if !purge {
		log.Warn("a kube-proxy's rules are in this node: they translate Service traffic before anet does; once kube-proxy is stopped, start anetd with --purge-kube-proxy-rules to remove them",
			"found", found.Summary())
		return
	}
	log.Info("removing a kube-proxy's rules (--purge-kube-proxy-rules)", "found", found.Summary())
	if err := kubeproxy.Purge(ctx); err != nil {
		log.Error("removing a kube-proxy's rules", "err", err)
		return
	}
	log.Info("kube-proxy's rules removed")
}

// nodeDevices is the endpoint manager's view of the node's links.
type nodeDevices struct{ layout datapath.Layout }

// Exists reports whether a host-side veth is still there, by index and name
// (an index alone may have been reused).
func (nodeDevices) Exists(name string, ifindex uint32) bool {
	lk, err := netlink.LinkByIndex(int(ifindex))
	return err == nil && lk.Attrs().Name == name
}

// List names the endpoint host-side veths there are.
func (nodeDevices) List() ([]string, error) { return datapath.HostDevices() }

// Remove deletes a host-side veth (its peer goes with it) and its link pins.
func (d nodeDevices) Remove(name string) (bool, error) {
	lk, err := netlink.LinkByName(name)
	var notFound netlink.LinkNotFoundError
	removed := false
	switch {
	case errors.As(err, &notFound):
	case err != nil:
		return false, fmt.Errorf("finding %s: %w", name, err)
	default:
		if err := netlink.LinkDel(lk); err != nil && !errors.As(err, &notFound) {
			return false, fmt.Errorf("deleting %s: %w", name, err)
		}
		removed = err == nil
	}
	return removed, datapath.DetachEndpoint(d.layout, name)
}

// addGatewayAddress puts the pods' gateway address on lo, so that the node
// answers on it (ping, DNS on the node) as a router would.
func addGatewayAddress(gw netip.Addr) error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("finding lo: %w", err)
	}
	addr := &netlink.Addr{IPNet: netipToIPNet(netip.PrefixFrom(gw, 32))}
	if err := netlink.AddrReplace(lo, addr); err != nil {
		return fmt.Errorf("adding gateway %s to lo: %w", gw, err)
	}
	return nil
}
