//go:build linux

package main

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"

	"github.com/anet-dev/anet/bench/internal/stats"
	"github.com/anet-dev/anet/lab/testnode"
)

// The reference plugins' conflist; @DATADIR@ becomes host-local's state
// directory inside the run's temporary directory.
//
//go:embed bridge.conflist
var bridgeConflist string

// pod is a network namespace standing for a pod sandbox, as in testnode,
// but driven by whichever network (anet or bridge) it belongs to.
type pod struct {
	name        string
	ns          ns.NetNS
	containerID string
	ifName      string
	ip          netip.Addr
	live        bool // an ADD was attempted and no DEL succeeded since
}

// network is one CNI network on one simulated node: the anet node of
// testnode, or a bare node netns for the reference bridge plugin. Both are
// driven the same way: libcni, from a thread in the node's netns, with the
// plugin binaries of the same bin directory.
type network struct {
	name   string
	nodeNS ns.NetNS
	list   *libcni.NetworkConfigList
	cni    *libcni.CNIConfig
	subnet netip.Prefix
	logs   *syncBuffer // anetd's log (anet only)
	cache  string      // libcni's cache dir, of this run

	mu   sync.Mutex
	pods []*pod
}

func (w *network) rt(p *pod) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{
		ContainerID: p.containerID, NetNS: p.ns.Path(), IfName: p.ifName,
		// As containerd (go-cni) passes them: the reference plugins
		// refuse arguments they do not know unless told to ignore them.
		Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "bench"}, {"K8S_POD_NAME", p.name},
			{"K8S_POD_INFRA_CONTAINER_ID", p.containerID}, {"K8S_POD_UID", "uid-" + p.name}},
	}
}

// execCall is what timedExec learned about one plugin process: when it was
// started and reaped, and what it wrote on stderr. It rides in the
// context of a libcni call.
type execCall struct {
	start, end time.Time
	stderr     []byte
}

type execCallKey struct{}

// timedExec is libcni's invoke.RawExec (exec of the plugin binary with the
// CNI_* environment and the config on stdin) plus a stopwatch around the
// process alone: start to exit, without libcni's config building and
// result cache, so the report can show what libcni adds.
type timedExec struct{}

var _ invoke.Exec = (*timedExec)(nil)

func (*timedExec) FindInPath(plugin string, paths []string) (string, error) {
	return invoke.FindInPath(plugin, paths)
}

func (*timedExec) Decode(b []byte) (version.PluginInfo, error) {
	var d version.PluginDecoder
	return d.Decode(b)
}

func (e *timedExec) ExecPlugin(ctx context.Context, pluginPath string, stdin []byte, environ []string) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	c := exec.CommandContext(ctx, pluginPath)
	c.Env, c.Stdin, c.Stdout, c.Stderr = environ, bytes.NewReader(stdin), &stdout, &stderr
	start := time.Now()
	err := c.Run()
	end := time.Now()
	if rec, ok := ctx.Value(execCallKey{}).(*execCall); ok && rec.start.IsZero() {
		rec.start, rec.end, rec.stderr = start, end, stderr.Bytes()
	}
	if err != nil {
		// As RawExec: the plugin's error object is on stdout.
		perr := &types.Error{}
		if json.Unmarshal(stdout.Bytes(), perr) == nil && perr.Code != 0 {
			return nil, perr
		}
		return nil, fmt.Errorf("%s: %w (stderr: %s)", filepath.Base(pluginPath), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// opTiming is one CNI call: libcni's whole call and the plugin process in it.
type opTiming struct {
	call, proc time.Duration
	rec        *execCall
}

// add runs ADD for p and returns how long libcni took (the plugin
// processes, start to exit, and libcni's result cache).
func (w *network) add(p *pod) (time.Duration, error) {
	t, err := w.addTimed(p)
	return t.call, err
}

// addTimed is add with the plugin process timed apart from libcni.
func (w *network) addTimed(p *pod) (opTiming, error) {
	var (
		res types.Result
		err error
		d   time.Duration
	)
	rec := &execCall{}
	ctx := context.WithValue(context.Background(), execCallKey{}, rec)
	p.live = true
	doErr := w.nodeNS.Do(func(ns.NetNS) error {
		start := time.Now()
		res, err = w.cni.AddNetworkList(ctx, w.list, w.rt(p))
		d = time.Since(start)
		return nil
	})
	t := opTiming{call: d, proc: rec.end.Sub(rec.start), rec: rec}
	if doErr != nil {
		return t, doErr
	}
	if err != nil {
		return t, fmt.Errorf("%s ADD %s: %w", w.name, p.name, err)
	}
	r, err := current.NewResultFromResult(res)
	if err != nil {
		return t, fmt.Errorf("%s ADD %s: result: %w", w.name, p.name, err)
	}
	if len(r.IPs) == 0 {
		return t, fmt.Errorf("%s ADD %s: no address in the result", w.name, p.name)
	}
	ip, ok := netip.AddrFromSlice(r.IPs[0].Address.IP.To4())
	if !ok || !w.subnet.Contains(ip) {
		return t, fmt.Errorf("%s ADD %s: address %s outside %s", w.name, p.name, r.IPs[0].Address.IP, w.subnet)
	}
	p.ip = ip
	return t, nil
}

// del runs DEL for p.
func (w *network) del(p *pod) (time.Duration, error) {
	t, err := w.delTimed(p)
	return t.call, err
}

func (w *network) delTimed(p *pod) (opTiming, error) {
	var (
		err error
		d   time.Duration
	)
	rec := &execCall{}
	ctx := context.WithValue(context.Background(), execCallKey{}, rec)
	doErr := w.nodeNS.Do(func(ns.NetNS) error {
		start := time.Now()
		err = w.cni.DelNetworkList(ctx, w.list, w.rt(p))
		d = time.Since(start)
		return nil
	})
	t := opTiming{call: d, proc: rec.end.Sub(rec.start), rec: rec}
	if doErr != nil {
		return t, doErr
	}
	if err != nil {
		return t, fmt.Errorf("%s DEL %s: %w", w.name, p.name, err)
	}
	p.live = false
	return t, nil
}

// newPod makes a pod netns with lo up; a cleanup removes it.
func (b *bench) newPod(w *network, name string) *pod {
	pns, err := testutils.NewNS()
	if err != nil {
		b.t.Fatal(err)
	}
	b.t.Cleanup(func() {
		pns.Close()
		_ = testutils.UnmountNS(pns)
	})
	err = pns.Do(func(ns.NetNS) error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	})
	if err != nil {
		b.t.Fatalf("pod %s: lo up: %v", name, err)
	}
	p := &pod{name: name, ns: pns, ifName: "eth0"}
	p.containerID = b.runID + "-" + name
	w.mu.Lock()
	w.pods = append(w.pods, p)
	w.mu.Unlock()
	return p
}

// delLive runs DEL for every pod of w that may still be wired (a cleanup).
func (w *network) delLive() {
	w.mu.Lock()
	pods := slices.Clone(w.pods)
	w.mu.Unlock()
	for _, p := range pods {
		if p.live {
			if _, err := w.del(p); err != nil {
				fmt.Fprintf(os.Stderr, "cleanup: %v\n", err)
			}
		}
	}
}

// anetNetwork starts a testnode (node netns, bpffs, anetd) and drives its
// rendered conflist. testnode starts anetd with --log-level debug (for
// tests); the bench replaces it by an anetd of its own with the same flags
// at the default level (info), as a DaemonSet runs it.
func (b *bench) anetNetwork() (*network, *testnode.Node) {
	n := testnode.New(b.t, testnode.Options{PodCIDR: "10.244.1.0/24"})
	logs := b.restartAnetdAtInfo(n)
	w := &network{
		name:   "anet-cni",
		nodeNS: n.NS,
		list:   n.Conflist(),
		cni:    libcni.NewCNIConfigWithCacheDir([]string{b.bin}, filepath.Join(n.Dir, "cni-cache"), &timedExec{}),
		cache:  filepath.Join(n.Dir, "cni-cache"),
		subnet: netip.MustParsePrefix(n.PodCIDR),
		logs:   logs,
	}
	b.t.Cleanup(w.delLive)
	return w, n
}

// syncBuffer collects a process's output for the bench to read.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

// restartAnetdAtInfo stops testnode's anetd and starts one with the same
// flags and no --log-level (its default, info), in the node's netns. It is
// stopped (SIGTERM, then SIGKILL after 10 s, by its PID) by a cleanup that
// runs before testnode's own.
func (b *bench) restartAnetdAtInfo(n *testnode.Node) *syncBuffer {
	n.StopAnetd()
	logs := &syncBuffer{}
	// nsenter execs anetd in place: the PID is anetd's.
	cmd := n.NSEnter(filepath.Join(b.bin, "anetd"),
		"--bpf-root", n.BPFRoot, "--state-dir", n.StateDir, "--socket", n.Socket,
		"--node-name", n.Name, "--pod-cidr", n.PodCIDR)
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		b.t.Fatalf("starting anetd: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	b.t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	b.anetdPID = cmd.Process.Pid
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		st, err := n.Client().Status(ctx)
		cancel()
		if err == nil && st.Ready {
			return logs
		}
		select {
		case <-done:
			b.t.Fatalf("anetd exited:\n%s", logs.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
	b.t.Fatalf("anetd not ready after 20s:\n%s", logs.String())
	return nil
}

// bridgeNetwork makes a bare node netns (lo up, nothing else) and the
// reference bridge + host-local conflist with its state in a temporary
// directory.
func (b *bench) bridgeNetwork() *network {
	nodeNS, err := testutils.NewNS()
	if err != nil {
		b.t.Fatal(err)
	}
	b.t.Cleanup(func() {
		nodeNS.Close()
		_ = testutils.UnmountNS(nodeNS)
	})
	_ = nodeNS.Do(func(ns.NetNS) error {
		lo, err := netlink.LinkByName("lo")
		if err == nil {
			err = netlink.LinkSetUp(lo)
		}
		return err
	})
	// host-local's data dir sits in a temporary directory beside anet's
	// state dir (both under os.TempDir(), one filesystem: the report
	// names its type for each).
	dir := b.t.TempDir()
	conf := strings.ReplaceAll(bridgeConflist, "@DATADIR@", filepath.Join(dir, "host-local"))
	list, err := libcni.ConfListFromBytes([]byte(conf))
	if err != nil {
		b.t.Fatalf("bridge conflist: %v", err)
	}
	w := &network{
		name:   "bridge+host-local",
		nodeNS: nodeNS,
		list:   list,
		cni:    libcni.NewCNIConfigWithCacheDir([]string{b.bin}, filepath.Join(dir, "cni-cache"), &timedExec{}),
		cache:  filepath.Join(dir, "cni-cache"),
		subnet: netip.MustParsePrefix("10.99.0.0/16"),
	}
	b.bridgeDir = dir
	b.t.Cleanup(w.delLive)
	return w
}

// cniStats is what one network measured.
type cniStats struct {
	serialAdd, serialDel         []time.Duration
	serialAddProc, serialDelProc []time.Duration // the plugin process alone
	addCalls                     []addCall       // the serial ADDs, for the anetd log breakdown
	parAdd, parDel               []time.Duration
	addRate, delRate             []float64 // pods/s, one per round
}

// addCall is one serial ADD: its container ID and when its plugin
// process started and was reaped.
type addCall struct {
	containerID string
	start, end  time.Time
}

type cniResult struct {
	pods, parallel, rounds int
	anet, bridge           cniStats
	fsAnet, fsBridge       string // filesystem of anet's state dir and host-local's data dir
	breakdown              *breakdown
	checks                 []string
	problems               []string
}

// parallel runs op on every pod with the given number of workers and
// returns each op's latency and the wall time of the batch. It stops
// starting ops when ctx ends; the first error is returned.
func parallel(ctx context.Context, pods []*pod, workers int, op func(*pod) (time.Duration, error)) ([]time.Duration, time.Duration, error) {
	var (
		mu   sync.Mutex
		lat  []time.Duration
		errs []error
		wg   sync.WaitGroup
	)
	next := make(chan *pod)
	start := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := range next {
				d, err := func() (d time.Duration, err error) {
					defer func() {
						if r := recover(); r != nil {
							err = fmt.Errorf("panic: %v", r)
						}
					}()
					return op(p)
				}()
				mu.Lock()
				if err != nil {
					errs = append(errs, err)
				} else {
					lat = append(lat, d)
				}
				mu.Unlock()
			}
		}()
	}
feed:
	for _, p := range pods {
		select {
		case next <- p:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	wall := time.Since(start)
	if len(errs) > 0 {
		return lat, wall, fmt.Errorf("%d of %d failed, first: %w", len(errs), len(pods), errs[0])
	}
	return lat, wall, ctx.Err()
}

// benchCNI measures ADD and DEL of the two networks, interleaved: first one
// pod at a time (latency without contention, the two plugins alternating
// pod by pod), then batches of all pods with several workers (sustained
// rate, the plugins alternating batch by batch).
func (b *bench) benchCNI(ctx context.Context, anet, bridge *network, node *testnode.Node) *cniResult {
	cfg := b.cfg
	res := &cniResult{pods: cfg.pods, parallel: cfg.parallel, rounds: cfg.rounds}
	ap := make([]*pod, cfg.pods)
	bp := make([]*pod, cfg.pods)
	b.logf("cni: making %d pod netns per network", cfg.pods)
	for i := range cfg.pods {
		ap[i] = b.newPod(anet, fmt.Sprintf("a%03d", i))
		bp[i] = b.newPod(bridge, fmt.Sprintf("b%03d", i))
	}
	nets := []struct {
		w    *network
		pods []*pod
		st   *cniStats
	}{{anet, ap, &res.anet}, {bridge, bp, &res.bridge}}
	must := func(_ time.Duration, err error) {
		if err != nil {
			b.t.Fatal(err)
		}
	}
	setIDs := func(pods []*pod, tag string) {
		for _, p := range pods {
			p.containerID = fmt.Sprintf("%s-%s-%s", b.runID, tag, p.name)
		}
	}
	// Warm up: the first ADD of each network creates what later ones
	// reuse (the bridge, anetd's first endpoint, page cache of binaries).
	for _, n := range nets {
		setIDs(n.pods[:1], "warm")
		must(n.w.add(n.pods[0]))
		must(n.w.del(n.pods[0]))
	}

	b.logf("cni: serial ADD/DEL, %d pods per network, alternating", cfg.pods)
	for _, n := range nets {
		setIDs(n.pods, "s")
	}
	for _, verb := range []string{"ADD", "DEL"} {
		for i := range cfg.pods {
			if ctx.Err() != nil {
				b.t.Fatal(ctx.Err())
			}
			order := []int{0, 1}
			if i%2 == 1 {
				order = []int{1, 0}
			}
			for _, k := range order {
				n := nets[k]
				if verb == "ADD" {
					t, err := n.w.addTimed(n.pods[i])
					must(t.call, err)
					n.st.serialAdd = append(n.st.serialAdd, t.call)
					n.st.serialAddProc = append(n.st.serialAddProc, t.proc)
					n.st.addCalls = append(n.st.addCalls, addCall{n.pods[i].containerID, t.rec.start, t.rec.end})
				} else {
					t, err := n.w.delTimed(n.pods[i])
					must(t.call, err)
					n.st.serialDel = append(n.st.serialDel, t.call)
					n.st.serialDelProc = append(n.st.serialDelProc, t.proc)
				}
			}
		}
	}
	res.checks = append(res.checks, b.leftoverChecks(node, "after the serial DELs")...)

	b.logf("cni: %d rounds of %d pods with %d workers, alternating networks", cfg.rounds, cfg.pods, cfg.parallel)
	for r := range cfg.rounds {
		order := []int{0, 1}
		if r%2 == 1 {
			order = []int{1, 0}
		}
		for _, k := range order {
			n := nets[k]
			setIDs(n.pods, fmt.Sprintf("p%d", r))
			lat, wall, err := parallel(ctx, n.pods, cfg.parallel, n.w.add)
			if err != nil {
				b.t.Fatalf("parallel ADD: %v", err)
			}
			n.st.parAdd = append(n.st.parAdd, lat...)
			n.st.addRate = append(n.st.addRate, float64(len(n.pods))/wall.Seconds())
			lat, wall, err = parallel(ctx, n.pods, cfg.parallel, n.w.del)
			if err != nil {
				b.t.Fatalf("parallel DEL: %v", err)
			}
			n.st.parDel = append(n.st.parDel, lat...)
			n.st.delRate = append(n.st.delRate, float64(len(n.pods))/wall.Seconds())
			b.logf("cni: round %d %s: ADD %.1f pods/s, DEL %.1f pods/s", r+1, n.w.name,
				n.st.addRate[len(n.st.addRate)-1], n.st.delRate[len(n.st.delRate)-1])
		}
	}
	res.checks = append(res.checks, b.leftoverChecks(node, "after the parallel DELs")...)

	b.logf("cni: breakdown of one ADD (binary starts, anetd's log, strace, ANET_CNI_TRACE)")
	res.breakdown = b.breakdownADD(ctx, anet, bridge, ap, bp, res.anet.addCalls)
	res.checks = append(res.checks, b.leftoverChecks(node, "after the breakdown runs")...)
	res.checks = append(res.checks, anetdLogCheck(anet.logs.String()))
	res.fsAnet, res.fsBridge = fsType(node.StateDir), fsType(b.bridgeDir)
	return res
}

// anetdLogCheck reports the warnings and errors anetd logged (slog text
// lines) during the CNI benchmark.
func anetdLogCheck(log string) string {
	var bad []string
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR") {
			bad = append(bad, l)
		}
	}
	if len(bad) == 0 {
		return "ok: anetd logged no warning or error"
	}
	return fmt.Sprintf("WARN: anetd logged %d warnings or errors, the first: `%s`", len(bad), bad[0])
}

// leftoverChecks reports what DEL left behind on either node: testnode's
// own inventory for anet, and links and host-local allocations for the
// bridge node.
func (b *bench) leftoverChecks(node *testnode.Node, when string) []string {
	var out []string
	if left := node.Leftovers(); len(left) > 0 {
		out = append(out, fmt.Sprintf("FAIL: anet node not clean %s: %s", when, strings.Join(left, "; ")))
	} else {
		out = append(out, "ok: anet node clean (links, link pins, allocations, endpoint records, map entries) "+when)
	}
	var left []string
	_ = b.bridge.nodeNS.Do(func(ns.NetNS) error {
		links, _ := netlink.LinkList()
		for _, l := range links {
			if name := l.Attrs().Name; name != "lo" && name != "benchbr0" {
				left = append(left, "link "+name)
			}
		}
		return nil
	})
	es, _ := os.ReadDir(filepath.Join(b.bridgeDir, "host-local", "bench-bridge"))
	for _, e := range es {
		if n := e.Name(); n != "lock" && !strings.HasPrefix(n, "last_reserved_ip") {
			left = append(left, "allocation "+n)
		}
	}
	if len(left) > 0 {
		out = append(out, fmt.Sprintf("FAIL: bridge node not clean %s: %s", when, strings.Join(left, "; ")))
	} else {
		out = append(out, "ok: bridge node clean (veths, host-local allocations) "+when)
	}
	return out
}

// cniRows are the rows of the CNI table: anet, bridge, ratio anet/bridge.
func (r *cniResult) rows() [][]string {
	ms := func(ds []time.Duration, p float64) float64 { return stats.Percentile(stats.Millis(ds), p) }
	type row struct {
		name string
		a, b float64
		unit string
	}
	rs := []row{
		{"ADD p50, one at a time", ms(r.anet.serialAdd, 50), ms(r.bridge.serialAdd, 50), "ms"},
		{"ADD p99, one at a time", ms(r.anet.serialAdd, 99), ms(r.bridge.serialAdd, 99), "ms"},
		{"ADD p50, one at a time, plugin process only", ms(r.anet.serialAddProc, 50), ms(r.bridge.serialAddProc, 50), "ms"},
		{"DEL p50, one at a time", ms(r.anet.serialDel, 50), ms(r.bridge.serialDel, 50), "ms"},
		{"DEL p99, one at a time", ms(r.anet.serialDel, 99), ms(r.bridge.serialDel, 99), "ms"},
		{"DEL p50, one at a time, plugin process only", ms(r.anet.serialDelProc, 50), ms(r.bridge.serialDelProc, 50), "ms"},
		{fmt.Sprintf("ADD p50, %d in parallel", r.parallel), ms(r.anet.parAdd, 50), ms(r.bridge.parAdd, 50), "ms"},
		{fmt.Sprintf("ADD p99, %d in parallel", r.parallel), ms(r.anet.parAdd, 99), ms(r.bridge.parAdd, 99), "ms"},
		{fmt.Sprintf("DEL p50, %d in parallel", r.parallel), ms(r.anet.parDel, 50), ms(r.bridge.parDel, 50), "ms"},
		{fmt.Sprintf("DEL p99, %d in parallel", r.parallel), ms(r.anet.parDel, 99), ms(r.bridge.parDel, 99), "ms"},
		{fmt.Sprintf("ADD rate, %d pods, %d in parallel (median of %d)", r.pods, r.parallel, r.rounds), stats.Median(r.anet.addRate), stats.Median(r.bridge.addRate), "pods/s"},
		{fmt.Sprintf("DEL rate, %d pods, %d in parallel (median of %d)", r.pods, r.parallel, r.rounds), stats.Median(r.anet.delRate), stats.Median(r.bridge.delRate), "pods/s"},
	}
	var out [][]string
	for _, x := range rs {
		out = append(out, []string{x.name, num(x.a) + " " + x.unit, num(x.b) + " " + x.unit, ratio(x.a, x.b)})
	}
	return out
}
