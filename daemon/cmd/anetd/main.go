// anetd is anet's node daemon: it owns the eBPF programs and maps of its
// node, keeps the endpoints of the node's pods, and serves the socket API
// that anet-cni and anetctl use.
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
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/anet-dev/anet/daemon/api"
	"github.com/anet-dev/anet/daemon/apiserver"
	"github.com/anet-dev/anet/daemon/datapath"
	"github.com/anet-dev/anet/daemon/endpoint"
	"github.com/anet-dev/anet/daemon/ipam"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

type config struct {
	bpfRoot  string
	stateDir string
	socket   string
	nodeName string
	podCIDR  string
	logLevel string
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
	if err := fs.Parse(args); err != nil {
		return nil, err
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
	if c.podCIDR == "" {
		return nil, errors.New("--pod-cidr is required")
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
	cidr, err := netip.ParsePrefix(cfg.podCIDR)
	if err != nil {
		return fmt.Errorf("--pod-cidr: %w", err)
	}
	alloc, err := ipam.New(filepath.Join(cfg.stateDir, "ipam"), cidr, log)
	if err != nil {
		return fmt.Errorf("--pod-cidr: %w", err)
	}
	dp, err := datapath.Load(cfg.bpfRoot, log)
	if err != nil {
		return err
	}
	defer dp.Close()
	eps, err := endpoint.New(filepath.Join(cfg.stateDir, "endpoints"), alloc, dp, deviceExists, log)
	if err != nil {
		return err
	}
	pending := api.PendingReleaseDir(cfg.socket)

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

	if err := eps.Restore(pending); err != nil {
		return fmt.Errorf("restoring endpoints: %w", err)
	}
	if err := addGatewayAddress(alloc.Gateway()); err != nil {
		return err
	}
	ready.Store(true)
	log.Info("anetd ready", "node", cfg.nodeName, "podCIDR", alloc.CIDR(), "endpoints", eps.Count(),
		"bpfRoot", cfg.bpfRoot, "socket", cfg.socket, "version", version)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
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
			log.Info("shutting down; pinned programs and maps stay and keep forwarding")
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
			_ = os.Remove(cfg.socket)
			return nil
		}
	}
}

// deviceExists reports whether a host-side veth is still there, by index and
// name (an index alone may have been reused).
func deviceExists(name string, ifindex uint32) bool {
	lk, err := netlink.LinkByIndex(int(ifindex))
	return err == nil && lk.Attrs().Name == name
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
