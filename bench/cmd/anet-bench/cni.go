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
// context of a libcni call; with trace set, the plugin also gets
// ANET_CNI_TRACE=1 in its environment (the bridge plugins ignore it).
type execCall struct {
	trace      bool
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
	rec, _ := ctx.Value(execCallKey{}).(*execCall)
	if rec != nil && rec.trace {
		environ = append(slices.Clone(environ), "ANET_CNI_TRACE=1")
	}
	// As libcni's RawExec: the config on stdin, stdout and stderr into
	// buffers (pipes, copied by os/exec). (The plugin's streams as memfds
	// were tried: they made "libcni around the plugin" 0.4 ms longer for
	// both networks. Running the plugins and anetd at SCHED_FIFO, to
	// shield them from other jobs, was tried too: anetd livelocked within
	// minutes, a Go runtime thread spinning at a priority that the
	// threads it waited for could not get.)
	c := exec.CommandContext(ctx, pluginPath)
	c.Env, c.Stdin, c.Stdout, c.Stderr = environ, bytes.NewReader(stdin), &stdout, &stderr
	start := time.Now()
	err := c.Run()
	end := time.Now()
	if rec != nil && rec.start.IsZero() {
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
	t, err := w.addTimed(p, false)
	return t.call, err
}

// addTimed is add with the plugin process timed apart from libcni, and
// with ANET_CNI_TRACE=1 if trace.
func (w *network) addTimed(p *pod, trace bool) (opTiming, error) {
	var (
		res types.Result
		err error
		d   time.Duration
	)
	rec := &execCall{trace: trace}
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

// anetNetwork starts a testnode (node netns, bpffs, anetd with the extra
// flags) and drives its rendered conflist. testnode starts anetd with
// --log-level debug (for tests); the bench replaces it by an anetd of its
// own with the same flags at the default level (info), as a DaemonSet runs
// it.
func (b *bench) anetNetwork(name, podCIDR string, anetdArgs ...string) (*network, *testnode.Node) {
	n := testnode.New(b.t, testnode.Options{PodCIDR: podCIDR, AnetdArgs: anetdArgs})
	logs := b.restartAnetdAtInfo(n, anetdArgs...)
	w := &network{
		name:   name,
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
// flags (extra are the ones passed to testnode) and no --log-level (its
// default, info), in the node's netns. It is stopped (SIGTERM, then
// SIGKILL after 10 s, by its PID) by a cleanup that runs before testnode's
// own.
func (b *bench) restartAnetdAtInfo(n *testnode.Node, extra ...string) *syncBuffer {
	n.StopAnetd()
	logs := &syncBuffer{}
	// nsenter execs anetd in place: the PID is anetd's.
	args := append([]string{filepath.Join(b.bin, "anetd"),
		"--bpf-root", n.BPFRoot, "--state-dir", n.StateDir, "--socket", n.Socket,
		"--node-name", n.Name, "--pod-cidr", n.PodCIDR}, extra...)
	cmd := n.NSEnter(args[0], args[1:]...)
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
	traces                       []addTrace      // the serial ADDs (anet only), for the breakdown
	parAdd, parDel               []time.Duration
	addRate, delRate             []float64 // pods/s, one per round
}

type cniResult struct {
	pods, parallel, rounds int
	anet, bridge           cniStats
	tcx                    cniStats // anet with --endpoint-attach tcx, one at a time only
	fsAnet, fsBridge       string   // filesystem of anet's state dir and host-local's data dir
	breakdown              *breakdown
	checks                 []string
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

// benchCNI measures ADD and DEL of the networks, interleaved: first one
// pod at a time (latency without contention, the networks taking turns pod
// by pod: anet, anet with --endpoint-attach tcx, bridge), then batches of
// all pods with several workers (sustained rate, anet and bridge taking
// turns batch by batch). The serial anet ADDs run with ANET_CNI_TRACE=1:
// their step lines make the breakdown.
func (b *bench) benchCNI(ctx context.Context, anet, bridge *network, node *testnode.Node) *cniResult {
	cfg := b.cfg
	res := &cniResult{pods: cfg.pods, parallel: cfg.parallel, rounds: cfg.rounds}
	b.logf("cni: starting a second anet node, anetd --endpoint-attach %s", datapathModeTCX)
	tcx, tcxNode := b.anetNetwork("anet-cni tcx", "10.244.2.0/24", "--endpoint-attach", datapathModeTCX)
	ap := make([]*pod, cfg.pods)
	tp := make([]*pod, cfg.pods)
	bp := make([]*pod, cfg.pods)
	b.logf("cni: making %d pod netns per network", cfg.pods)
	for i := range cfg.pods {
		ap[i] = b.newPod(anet, fmt.Sprintf("a%03d", i))
		tp[i] = b.newPod(tcx, fmt.Sprintf("t%03d", i))
		bp[i] = b.newPod(bridge, fmt.Sprintf("b%03d", i))
	}
	type netRun struct {
		w     *network
		pods  []*pod
		st    *cniStats
		trace bool
	}
	nets := []netRun{{anet, ap, &res.anet, true}, {tcx, tp, &res.tcx, true}, {bridge, bp, &res.bridge, false}}
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

	b.logf("cni: serial ADD/DEL, %d pods per network, taking turns", cfg.pods)
	for _, n := range nets {
		setIDs(n.pods, "s")
	}
	for _, verb := range []string{"ADD", "DEL"} {
		for i := range cfg.pods {
			if ctx.Err() != nil {
				b.t.Fatal(ctx.Err())
			}
			// Which network goes first rotates from pod to pod.
			for j := range nets {
				n := nets[(i+j)%len(nets)]
				if verb == "ADD" {
					t, err := n.w.addTimed(n.pods[i], n.trace)
					must(t.call, err)
					n.st.serialAdd = append(n.st.serialAdd, t.call)
					n.st.serialAddProc = append(n.st.serialAddProc, t.proc)
					if n.trace {
						n.st.traces = append(n.st.traces, newAddTrace(n.pods[i].containerID, t))
					}
				} else {
					t, err := n.w.delTimed(n.pods[i])
					must(t.call, err)
					n.st.serialDel = append(n.st.serialDel, t.call)
					n.st.serialDelProc = append(n.st.serialDelProc, t.proc)
				}
			}
		}
	}
	anetNodes := []anetNode{{anet.name, node}, {tcx.name, tcxNode}}
	res.checks = append(res.checks, b.leftoverChecks(anetNodes, "after the serial DELs")...)
	res.checks = append(res.checks,
		anetdAddedCheck(anet.name, anet.logs.String(), res.anet.traces, datapathModeTC),
		anetdAddedCheck(tcx.name, tcx.logs.String(), res.tcx.traces, datapathModeTCX))

	b.logf("cni: %d rounds of %d pods with %d workers, alternating networks", cfg.rounds, cfg.pods, cfg.parallel)
	par := []netRun{nets[0], nets[2]}
	for r := range cfg.rounds {
		order := []int{0, 1}
		if r%2 == 1 {
			order = []int{1, 0}
		}
		for _, k := range order {
			n := par[k]
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
	res.checks = append(res.checks, b.leftoverChecks(anetNodes, "after the parallel DELs")...)

	b.logf("cni: breakdown of an ADD (binary starts, ANET_CNI_TRACE of the serial ADDs, bridge under strace)")
	res.breakdown = b.breakdownADD(ctx, bridge, bp, res.anet.traces, res.tcx.traces)
	res.checks = append(res.checks, b.leftoverChecks(anetNodes, "after the breakdown runs")...)
	res.checks = append(res.checks, anetdLogCheck(anet.name, anet.logs.String()), anetdLogCheck(tcx.name, tcx.logs.String()))
	res.fsAnet, res.fsBridge = fsType(node.StateDir), fsType(b.bridgeDir)
	return res
}

// The attach modes as anetd names them (daemon/datapath, which the bench
// does not import for two strings).
const (
	datapathModeTC  = "tc"
	datapathModeTCX = "tcx"
)

// anetdLogCheck reports the warnings and errors anetd logged (slog text
// lines) during the CNI benchmark.
func anetdLogCheck(name, log string) string {
	var bad []string
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR") {
			bad = append(bad, l)
		}
	}
	if len(bad) == 0 {
		return fmt.Sprintf("ok: anetd of %s logged no warning or error", name)
	}
	return fmt.Sprintf("WARN: anetd of %s logged %d warnings or errors, the first: `%s`", name, len(bad), bad[0])
}

// anetdAddedCheck checks that anetd logged "endpoint added" with the
// expected attach mode for every traced ADD: that the ADDs went through
// anetd, and that the tcx network really attached with TCX.
func anetdAddedCheck(name, log string, traces []addTrace, mode string) string {
	modes := map[string]string{}
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, `msg="endpoint added"`) {
			modes[logField(l, "containerID")] = logField(l, "mode")
		}
	}
	var missing, wrong int
	first := ""
	for _, t := range traces {
		m, ok := modes[t.containerID]
		switch {
		case !ok:
			missing++
		case m != mode:
			wrong++
			if first == "" {
				first = m
			}
		}
	}
	switch {
	case len(traces) == 0:
		return fmt.Sprintf("FAIL: %s: no ADD to check anetd's log against", name)
	case missing > 0 || wrong > 0:
		return fmt.Sprintf("FAIL: %s: of %d serial ADDs, %d have no \"endpoint added\" line in anetd's log, %d a mode other than %s (e.g. %q)",
			name, len(traces), missing, wrong, mode, first)
	}
	return fmt.Sprintf("ok: %s: anetd logged \"endpoint added\" with mode=%s for each of the %d serial ADDs", name, mode, len(traces))
}

// anetNode is an anet node and the name of its network in the report.
type anetNode struct {
	name string
	node *testnode.Node
}

// leftoverChecks reports what DEL left behind on the nodes: testnode's
// own inventory for anet, and links and host-local allocations for the
// bridge node.
func (b *bench) leftoverChecks(nodes []anetNode, when string) []string {
	var out []string
	for _, n := range nodes {
		if left := n.node.Leftovers(); len(left) > 0 {
			out = append(out, fmt.Sprintf("FAIL: %s node not clean %s: %s", n.name, when, strings.Join(left, "; ")))
		} else {
			out = append(out, fmt.Sprintf("ok: %s node clean (links, link pins, allocations, endpoint records, map entries) %s", n.name, when))
		}
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

// The target of issue 7 ("Speed of ADD"): ADD p50 one at a time at most
// 20 ms, and at most half of bridge + host-local's in the same run.
const (
	targetAddP50  = 20.0 // ms
	targetAddRate = 0.5  // anet / bridge
)

// verdict says whether ADD met its target, and what the attach mode costs.
func (r *cniResult) verdict() string {
	ms := func(ds []time.Duration) float64 { return stats.Median(stats.Millis(ds)) }
	a, br, t := ms(r.anet.serialAdd), ms(r.bridge.serialAdd), ms(r.tcx.serialAdd)
	met := func(ok bool) string {
		if ok {
			return "met"
		}
		return "**not met**"
	}
	rt := stats.Ratio(a, br)
	return fmt.Sprintf("**Target** (issue 7): ADD p50 one at a time ≤ %.0f ms: %s ms, %s; at least 2× faster than bridge + host-local (anet / bridge ≤ %.2f×): %s, %s. "+
		"**Attach mode**: ADD p50 with `--endpoint-attach tcx` %s ms against %s ms with tc (the default), tcx / tc %s, %+.1f ms.",
		targetAddP50, num(a), met(a <= targetAddP50), targetAddRate, ratio(a, br), met(rt <= targetAddRate),
		num(t), num(a), ratio(t, a), t-a)
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
		{"ADD p50, one at a time, anetd `--endpoint-attach tcx`", ms(r.tcx.serialAdd, 50), ms(r.bridge.serialAdd, 50), "ms"},
		{"ADD p99, one at a time, anetd `--endpoint-attach tcx`", ms(r.tcx.serialAdd, 99), ms(r.bridge.serialAdd, 99), "ms"},
		{"DEL p50, one at a time", ms(r.anet.serialDel, 50), ms(r.bridge.serialDel, 50), "ms"},
		{"DEL p99, one at a time", ms(r.anet.serialDel, 99), ms(r.bridge.serialDel, 99), "ms"},
		{"DEL p50, one at a time, plugin process only", ms(r.anet.serialDelProc, 50), ms(r.bridge.serialDelProc, 50), "ms"},
		{"DEL p50, one at a time, anetd `--endpoint-attach tcx`", ms(r.tcx.serialDel, 50), ms(r.bridge.serialDel, 50), "ms"},
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
