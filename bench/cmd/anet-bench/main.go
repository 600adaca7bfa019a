//go:build linux

// anet-bench measures anet side by side with its peers in one run and
// writes a markdown report of the figures and their ratios:
//
//  1. CNI ADD and DEL latency (p50, p99) and sustained pods/s, anet-cni with
//     its anetd vs the reference bridge + host-local plugins, both through
//     libcni on a simulated node (lab/testnode) as a runtime invokes them,
//     and where one ADD goes (binary starts, ANET_CNI_TRACE's steps of the
//     plugin and of anetd, the bridge under strace); anet's ADD also with
//     anetd --endpoint-attach tcx.
//  2. Same-node pod-to-pod TCP request/response rate (sockperf) and bulk
//     throughput (iperf3): anet pods vs a bare veth pair vs bridge pods.
//  3. The per-packet cost of anet_from_container in BPF_PROG_TEST_RUN
//     against an empty program.
//  4. Pod start latency (create to Ready) and pods/s through real kubelets
//     and containerd: two 2-node labs (package lab), one wired by anet, one
//     by the reference bridge + host-local plugins.
//  5. Services: connect() latency to a ClusterIP, programming time and
//     memory, anet against kube-proxy in iptables and nftables modes, on a
//     3-node lab (services.go).
//  6. The per-packet cost of the pod programs with NetworkPolicy in
//     BPF_PROG_TEST_RUN, against the same programs with the endpoints not
//     under policy (policy.go).
//  7. NetworkPolicy in a 3-node lab (netpol.go): pod-to-pod request/response
//     rate and new-connection latency under an allowing policy with 0,
//     1 000 and 10 000 rules in the cluster, as ratios to 0 rules; the time
//     from creating a policy to its enforcement on every node, p50 and p99.
//
// It runs as root. Everything it makes (network namespaces, a bpffs mount,
// anetd, the tools' processes, the labs, temporary files) lives in
// namespaces and directories of its own and is removed at the end, also on error and on
// Ctrl-C (SIGINT or SIGTERM; a third signal exits at once, leaving things
// behind). All traffic stays inside its own netns, on 10.x addresses.
//
// Usage: scripts/bench.sh [flags], or anet-bench -bin ./bin -out bench/results.md.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/anet-dev/anet/bench/internal/tb"
	"github.com/anet-dev/anet/lab/testnode"
)

type config struct {
	bin, out                string
	pods, parallel, rounds  int
	rrReps, rrSeconds       int
	tputReps, tputSeconds   int
	progPackets, progPasses int
	labNodes, labPods       int
	labRounds, labSerial    int
	cpu                     string
	sections                map[string]bool
	svc                     svcConfig
	pol                     polConfig
	np                      npConfig
}

type bench struct {
	t         *tb.T
	cfg       config
	bin       string
	runID     string
	bridge    *network
	bridgeDir string
	anetNode  *testnode.Node

	procMu sync.Mutex
	procs  map[int]*proc
}

func (b *bench) logf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "%s anet-bench: %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, a...))
}

func main() { os.Exit(run()) }

func run() int {
	var cfg config
	defBin := os.Getenv("ANET_BIN")
	if defBin == "" {
		defBin = "bin"
	}
	var only string
	quick := false
	flag.StringVar(&cfg.bin, "bin", defBin, "directory with anet-cni, anetd, anetctl, bridge and host-local ($ANET_BIN)")
	flag.StringVar(&cfg.out, "out", "bench/results.md", "report to write (markdown)")
	flag.IntVar(&cfg.pods, "pods", 100, "pods per network in the CNI benchmark")
	flag.IntVar(&cfg.parallel, "parallel", 4, "CNI operations in flight in the parallel rounds")
	flag.IntVar(&cfg.rounds, "rounds", 3, "parallel CNI rounds per network")
	flag.IntVar(&cfg.rrReps, "rr-reps", 5, "request/response runs per setup")
	flag.IntVar(&cfg.rrSeconds, "rr-time", 3, "seconds of each request/response run (sockperf adds about 2.5 s of warm-up and teardown)")
	flag.IntVar(&cfg.tputReps, "tput-reps", 3, "throughput runs per setup")
	flag.IntVar(&cfg.tputSeconds, "tput-time", 3, "seconds of each throughput run (plus one omitted)")
	flag.IntVar(&cfg.progPackets, "prog-packets", 1_000_000, "packets per case per pass in BPF_PROG_TEST_RUN")
	flag.IntVar(&cfg.progPasses, "prog-passes", 3, "passes of the BPF_PROG_TEST_RUN measurement")
	flag.IntVar(&cfg.labNodes, "lab-nodes", 2, "nodes of each lab in the pod start benchmark")
	flag.IntVar(&cfg.labPods, "lab-pods", 20, "pods created at once per round in the pod start benchmark")
	flag.IntVar(&cfg.labRounds, "lab-rounds", 3, "rounds per lab in the pod start benchmark")
	flag.IntVar(&cfg.labSerial, "lab-serial", 8, "pods started one at a time per lab in the pod start benchmark")
	flag.StringVar(&only, "only", "cni,traffic,prog,policy,lab,services,netpol", "sections to run, comma-separated")
	cfg.svc.flags(flag.CommandLine)
	cfg.pol.flags(flag.CommandLine)
	cfg.np.flags(flag.CommandLine)
	flag.BoolVar(&quick, "quick", false, "a short smoke run: 20 pods, 1 round, 1 run of 2 s per setup, 1e5 packets, 2 lab pods one at a time and 10 in 1 round, 100 and 1000 Services with 2 runs of 500 connects, netpol with 2 runs of 1 s per count and 20 policies")
	flag.Parse()
	if quick {
		cfg.pods, cfg.rounds, cfg.progPackets, cfg.progPasses = 20, 1, 100_000, 1
		cfg.rrReps, cfg.rrSeconds, cfg.tputReps, cfg.tputSeconds = 1, 2, 1, 2
		cfg.labPods, cfg.labRounds, cfg.labSerial = 10, 1, 2
		cfg.svc.quick()
		cfg.pol.quick()
		cfg.np.quick()
	}
	cfg.sections = map[string]bool{}
	for _, s := range strings.Split(only, ",") {
		cfg.sections[strings.TrimSpace(s)] = true
	}
	// Client and server of the request/response test share the last CPU.
	cfg.cpu = strconv.Itoa(runtime.NumCPU() - 1)
	if err := preflight(&cfg); err != nil {
		fmt.Fprintf(os.Stderr, "anet-bench: %v\n", err)
		return 2
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		n := 0
		for s := range sigs {
			n++
			switch {
			case n == 1:
				fmt.Fprintf(os.Stderr, "\nanet-bench: %v: stopping and cleaning up (two more to exit at once, leaving things behind)\n", s)
				cancel()
			case n >= 3:
				fmt.Fprintln(os.Stderr, "anet-bench: exiting without cleanup")
				os.Exit(130)
			}
		}
	}()

	id := make([]byte, 3)
	_, _ = rand.Read(id)
	b := &bench{
		t: tb.New(ctx, "anet-bench", os.Stderr), cfg: cfg, bin: cfg.bin,
		runID: "bench" + hex.EncodeToString(id), procs: map[int]*proc{},
	}
	// Cleanups run last registered first, also when a section panics; the
	// tools go first, before the netns they run in.
	defer func() {
		b.logf("cleaning up")
		b.stopAll()
		b.t.RunCleanups()
	}()

	rep := &report{m: describeMachine(), cfg: cfg, errs: map[string]error{}}
	section := func(name string, f func()) {
		if !cfg.sections[name] {
			return
		}
		if ctx.Err() != nil {
			rep.errs[name] = errors.New("interrupted")
			return
		}
		start := time.Now()
		err := b.t.Do(f)
		if err == nil && ctx.Err() != nil {
			err = ctx.Err()
		}
		if err != nil {
			b.logf("%s: FAILED: %v", name, err)
			rep.errs[name] = err
		} else {
			b.logf("%s: done in %s", name, time.Since(start).Round(time.Second))
		}
	}

	var (
		anet, bridge *network
		nodeErr      error
	)
	setupNodes := func() {
		if anet != nil || nodeErr != nil {
			return
		}
		nodeErr = b.t.Do(func() {
			b.logf("starting the anet node (testnode: netns, bpffs, anetd) and the bridge node")
			w, n := b.anetNetwork("anet-cni", "10.244.1.0/24")
			anet = w
			b.anetNode = n
			bridge = b.bridgeNetwork()
			b.bridge = bridge
		})
	}
	if cfg.sections["cni"] || cfg.sections["traffic"] {
		setupNodes()
		if nodeErr != nil {
			rep.errs["cni"], rep.errs["traffic"] = nodeErr, nodeErr
		}
	}
	if nodeErr == nil {
		section("cni", func() { rep.cni = b.benchCNI(ctx, anet, bridge, b.anetNode) })
		section("traffic", func() { rep.traffic = b.benchTraffic(ctx, b.trafficSetups(anet, bridge)) })
	}
	section("prog", func() { rep.prog = b.benchProg() })
	section("policy", func() { rep.policy = b.benchPolicy() })
	section("lab", func() { rep.lab = b.benchLab(ctx) })
	section("services", func() { rep.services = b.benchServices(ctx) })
	section("netpol", func() { rep.netpol = b.benchNetpol(ctx) })

	rep.m.loadEnd = loadAvg()
	md := rep.markdown()
	if err := writeAtomic(cfg.out, md); err != nil {
		fmt.Fprintf(os.Stderr, "anet-bench: writing %s: %v\n", cfg.out, err)
		return 1
	}
	b.logf("wrote %s", cfg.out)
	if len(rep.errs) > 0 {
		if ctx.Err() != nil {
			return 130
		}
		return 1
	}
	return 0
}

// preflight fails early, with what to do, when the run cannot work.
func preflight(cfg *config) error {
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces, bpffs, eBPF)")
	}
	// The BPF_PROG_TEST_RUN sections need neither the tools nor the binaries.
	inKernel := true
	for s := range cfg.sections {
		inKernel = inKernel && (s == "prog" || s == "policy")
	}
	if inKernel {
		return nil
	}
	var missing []string
	for _, tool := range []string{"nsenter", "taskset", "ping", "sockperf", "iperf3"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing tools: %s (Debian: apt-get install util-linux iputils-ping sockperf iperf3)", strings.Join(missing, " "))
	}
	abs, err := filepath.Abs(cfg.bin)
	if err != nil {
		return err
	}
	cfg.bin = abs
	for _, f := range []string{"anet-cni", "anetd", "anetctl", "anet-install", "bridge", "host-local"} {
		if _, err := os.Stat(filepath.Join(cfg.bin, f)); err != nil {
			return fmt.Errorf("%s: %v (run make build)", f, err)
		}
	}
	// testnode finds the binaries through $ANET_BIN.
	return os.Setenv("ANET_BIN", cfg.bin)
}

func describeMachine() machine {
	m := machine{date: time.Now().UTC().Format("2006-01-02 15:04 MST"), cpus: runtime.NumCPU(), goVersion: runtime.Version()}
	var u syscall.Utsname
	if syscall.Uname(&u) == nil {
		m.kernel = cstr(u.Release[:])
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	m.loadStart = loadAvg()
	m.commit = "unknown"
	if out, err := exec.Command("git", "describe", "--always", "--dirty", "--abbrev=12").Output(); err == nil {
		m.commit = strings.TrimSpace(string(out))
		if strings.HasSuffix(m.commit, "-dirty") {
			m.commit += " (uncommitted changes in the work tree)"
		}
	}
	return m
}

// loadAvg is the 1, 5 and 15 minute load averages, as /proc/loadavg has them.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

func cstr(b []int8) string {
	var s []byte
	for _, c := range b {
		if c == 0 {
			break
		}
		s = append(s, byte(c))
	}
	return string(s)
}

func writeAtomic(path, content string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
