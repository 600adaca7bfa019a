//go:build linux

package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/anet-dev/anet/bench/internal/stats"
	"github.com/anet-dev/anet/lab"
)

// The lab section: pod start latency (create to Ready) and pods per second
// through real kubelets and containerd, on two 2-node labs (package lab)
// that differ only in the pods' network: anet (anet-cni and anetd) or the
// reference bridge + host-local plugins (no anetd). Both labs are up at
// the same time and the rounds alternate between them, so that whatever
// else loads the machine weighs on both alike.

// labPrefix names the labs' directories under the temporary directory; a
// run removes those whose owner died (a bench killed with SIGKILL).
const labPrefix = "anet-bench-lab-"

// labNet is one lab and what was measured on it.
type labNet struct {
	cni    string // lab.CNIAnet or lab.CNIBridge
	l      *lab.Lab
	up     time.Duration
	down   time.Duration
	w      *podWatch
	cidrs  map[string]netip.Prefix // node -> pod CIDR
	serial []time.Duration         // create -> Ready, one pod at a time
	lat    []time.Duration         // create -> Ready, every pod of the rounds
	rates  []float64               // pods/s per round: pods / (first seen created -> last Ready)
	dels   []float64               // pods/s per round: pods / (delete issued -> last gone)
	rounds []labRound
}

type labRound struct {
	round   int
	wall    time.Duration
	perNode map[string]int
}

type labResult struct {
	nodes, pods, rounds int
	serial              int
	anet, bridge        *labNet
	checks              []string
}

// podEvent is the part of a watch event the bench reads.
type podEvent struct {
	Type   string `json:"type"`
	Object struct {
		Metadata struct {
			Name   string            `json:"name"`
			Labels map[string]string `json:"labels"`
		} `json:"metadata"`
		Spec struct {
			NodeName string `json:"nodeName"`
		} `json:"spec"`
		Status struct {
			PodIP      string `json:"podIP"`
			Conditions []struct {
				Type   string `json:"type"`
				Status string `json:"status"`
			} `json:"conditions"`
		} `json:"status"`
	} `json:"object"`
}

// podTimes is what the watch saw of one pod, stamped on arrival.
type podTimes struct {
	created, ready, gone time.Time
	node, ip             string
}

// podWatch is one `kubectl get pods --watch` on a lab (in the control
// plane's netns, as every lab kubectl), stamping each pod's first sight,
// first Ready and deletion.
type podWatch struct {
	cmd    *exec.Cmd
	cancel context.CancelFunc
	done   chan struct{}

	mu   sync.Mutex
	pods map[string]*podTimes
	err  error
}

func startWatch(ctx context.Context, l *lab.Lab, selector string) (*podWatch, error) {
	wctx, cancel := context.WithCancel(ctx)
	base := l.KubectlCmd("get", "pods", "-l", selector, "--watch", "--output-watch-events", "-o", "json")
	cmd := exec.CommandContext(wctx, base.Path, base.Args[1:]...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		cancel()
		return nil, err
	}
	var errb strings.Builder
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		cancel()
		return nil, err
	}
	w := &podWatch{cmd: cmd, cancel: cancel, done: make(chan struct{}), pods: map[string]*podTimes{}}
	go func() {
		defer close(w.done)
		dec := json.NewDecoder(bufio.NewReader(out))
		for {
			var ev podEvent
			err := dec.Decode(&ev)
			now := time.Now()
			if err != nil {
				_ = cmd.Wait()
				w.mu.Lock()
				if err == io.EOF {
					err = fmt.Errorf("kubectl --watch ended: %s", strings.TrimSpace(errb.String()))
				}
				w.err = err
				w.mu.Unlock()
				return
			}
			w.see(ev, now)
		}
	}()
	return w, nil
}

func (w *podWatch) see(ev podEvent, now time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	o := ev.Object
	p := w.pods[o.Metadata.Name]
	if p == nil {
		p = &podTimes{created: now}
		w.pods[o.Metadata.Name] = p
	}
	if o.Spec.NodeName != "" {
		p.node = o.Spec.NodeName
	}
	if o.Status.PodIP != "" {
		p.ip = o.Status.PodIP
	}
	if ev.Type == "DELETED" {
		p.gone = now
		return
	}
	if p.ready.IsZero() {
		for _, c := range o.Status.Conditions {
			if c.Type == "Ready" && c.Status == "True" {
				p.ready = now
			}
		}
	}
}

// stop ends the watch (kubectl, a process this run started, is killed
// through its context) and waits for the reader.
func (w *podWatch) stop() {
	w.cancel()
	<-w.done
}

// wait polls the watch's record until cond holds for every named pod.
func (w *podWatch) wait(ctx context.Context, names []string, timeout time.Duration, what string, cond func(*podTimes) bool) error {
	deadline := time.Now().Add(timeout)
	for {
		w.mu.Lock()
		var missing []string
		for _, n := range names {
			if p := w.pods[n]; p == nil || !cond(p) {
				missing = append(missing, n)
			}
		}
		err := w.err
		w.mu.Unlock()
		if len(missing) == 0 {
			return nil
		}
		if err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d pod(s) not %s after %v: %s", len(missing), what, timeout, strings.Join(missing[:min(5, len(missing))], " "))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (w *podWatch) get(name string) podTimes {
	w.mu.Lock()
	defer w.mu.Unlock()
	if p := w.pods[name]; p != nil {
		return *p
	}
	return podTimes{}
}

// podsManifest is a List of n bare anet-testserver pods labelled
// anet-bench=<group>, spread evenly over the nodes by the scheduler.
func podsManifest(group string, n int) string {
	var items []string
	for i := range n {
		items = append(items, fmt.Sprintf(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":"%s-%02d","labels":{"anet-bench":%q}},
 "spec":{"terminationGracePeriodSeconds":1,
  "topologySpreadConstraints":[{"maxSkew":1,"topologyKey":"kubernetes.io/hostname","whenUnsatisfiable":"DoNotSchedule","labelSelector":{"matchLabels":{"anet-bench":%q}}}],
  "containers":[{"name":"server","image":"anet-testserver:latest","imagePullPolicy":"Never"}]}}`, group, i, group, group))
	}
	return `{"apiVersion":"v1","kind":"List","items":[` + strings.Join(items, ",\n") + "]}\n"
}

// prefixWriter prefixes every line written through it.
type prefixWriter struct {
	mu     sync.Mutex
	w      io.Writer
	prefix string
	mid    bool
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(b)
	for len(b) > 0 {
		if !p.mid {
			if _, err := io.WriteString(p.w, p.prefix); err != nil {
				return 0, err
			}
		}
		i := slices.Index(b, '\n')
		if i < 0 {
			p.mid = true
			_, err := p.w.Write(b)
			return n, err
		}
		if _, err := p.w.Write(b[:i+1]); err != nil {
			return 0, err
		}
		p.mid = false
		b = b[i+1:]
	}
	return n, nil
}

// reapBenchLabs removes the labs of earlier runs whose owner is gone.
func (b *bench) reapBenchLabs() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), labPrefix+"*"))
	for _, d := range dirs {
		s, err := lab.LoadState(d)
		if err != nil || s.Owner.Alive() {
			continue
		}
		b.logf("lab: removing %s, left by a run that died", d)
		if err := lab.DownDir(d, io.Discard); err != nil {
			b.logf("lab: %v", err)
		}
		_ = os.RemoveAll(d)
	}
}

// upLab brings one 2-node lab up in a directory of its own; a cleanup
// takes it down (also when a later step fails or the run is interrupted).
func (b *bench) upLab(ctx context.Context, cni string) *labNet {
	dir := b.labDir()
	// Machine-wide names (netns, cgroups) are prefixed with the run's id.
	name := "b" + strings.TrimPrefix(b.runID, "bench") + "-" + cni[:1]
	start := time.Now()
	l, err := lab.Up(ctx, lab.Options{
		Nodes: b.cfg.labNodes, Dir: dir, Name: name, CNI: cni, AnetBinDir: b.bin,
		Progress: &prefixWriter{w: os.Stderr, prefix: "  lab " + cni + " "},
	})
	if err != nil {
		b.t.Fatalf("lab %s: %v", cni, err)
	}
	n := &labNet{cni: cni, l: l, up: time.Since(start), cidrs: map[string]netip.Prefix{}}
	b.t.Cleanup(func() { b.downLab(n) })
	for _, nr := range l.Nodes {
		c, err := l.PodCIDR(nr.Name)
		if err != nil {
			b.t.Fatalf("lab %s: %v", cni, err)
		}
		p, err := netip.ParsePrefix(c)
		if err != nil {
			b.t.Fatalf("lab %s: %s pod CIDR %q: %v", cni, nr.Name, c, err)
		}
		n.cidrs[nr.Name] = p
	}
	return n
}

func (b *bench) downLab(n *labNet) {
	if n.w != nil {
		n.w.stop()
		n.w = nil
	}
	start := time.Now()
	if err := n.l.Down(); err != nil {
		b.logf("lab %s: down: %v", n.cni, err)
	}
	if n.down == 0 {
		n.down = time.Since(start)
	}
}

// runPods creates count pods of a group on n, waits until every one is
// Ready, runs probe (if any), deletes them and waits until they are gone.
// It returns each pod's create -> Ready latency, the wall time from the
// first pod seen to the last Ready, the time from the delete command to
// the last pod gone, the pods per node, and what the watch saw of each.
func (b *bench) runPods(ctx context.Context, n *labNet, group string, count int, probe func()) (lat []time.Duration, wall, del time.Duration, perNode map[string]int, pods []podTimes) {
	names := make([]string, count)
	for i := range count {
		names[i] = fmt.Sprintf("%s-%02d", group, i)
	}
	if _, err := n.l.KubectlStdin(podsManifest(group, count), "create", "-f", "-"); err != nil {
		b.t.Fatalf("lab %s: %v", n.cni, err)
	}
	if err := n.w.wait(ctx, names, 3*time.Minute, "Ready", func(p *podTimes) bool { return !p.ready.IsZero() }); err != nil {
		out, _ := n.l.Kubectl("get", "pods", "-o", "wide")
		b.t.Fatalf("lab %s: %v\n%s", n.cni, err, out)
	}
	var first, last time.Time
	perNode = map[string]int{}
	for _, nm := range names {
		p := n.w.get(nm)
		pods = append(pods, p)
		lat = append(lat, p.ready.Sub(p.created))
		if first.IsZero() || p.created.Before(first) {
			first = p.created
		}
		if p.ready.After(last) {
			last = p.ready
		}
		perNode[p.node]++
	}
	wall = last.Sub(first)
	if probe != nil {
		probe()
	}

	dstart := time.Now()
	if _, err := n.l.Kubectl("delete", "pods", "-l", "anet-bench="+group, "--wait=false"); err != nil {
		b.t.Fatalf("lab %s: %v", n.cni, err)
	}
	if err := n.w.wait(ctx, names, 3*time.Minute, "gone", func(p *podTimes) bool { return !p.gone.IsZero() }); err != nil {
		b.t.Fatalf("lab %s: %v", n.cni, err)
	}
	for _, nm := range names {
		if g := n.w.get(nm).gone.Sub(dstart); g > del {
			del = g
		}
	}
	return lat, wall, del, perNode, pods
}

// checkPods checks that every pod had an address from its node's pod CIDR.
func checkPods(n *labNet, pods []podTimes) error {
	for _, p := range pods {
		a, err := netip.ParseAddr(p.ip)
		if err != nil {
			return fmt.Errorf("lab %s: a pod on %s has no address (%q)", n.cni, p.node, p.ip)
		}
		if c, ok := n.cidrs[p.node]; !ok || !c.Contains(a) {
			return fmt.Errorf("lab %s: pod address %s outside %s's pod CIDR %s", n.cni, a, p.node, c)
		}
	}
	return nil
}

// pingPods checks that the first pod of a group reaches another pod of
// its node (ping from inside its netns), then returns the pair.
func (b *bench) pingPods(n *labNet, group string, count int) (string, error) {
	type pi struct{ name, node, ip string }
	var ps []pi
	for i := range count {
		nm := fmt.Sprintf("%s-%02d", group, i)
		p := n.w.get(nm)
		ps = append(ps, pi{nm, p.node, p.ip})
	}
	for _, q := range ps[1:] {
		if q.node != ps[0].node {
			continue
		}
		out, err := n.l.Exec("default", ps[0].name, "ping", "-c", "1", "-W", "2", q.ip)
		if err != nil {
			return "", fmt.Errorf("lab %s: ping %s (%s) -> %s (%s): %v\n%s", n.cni, ps[0].name, ps[0].ip, q.name, q.ip, err, out)
		}
		return fmt.Sprintf("%s -> %s on %s", ps[0].ip, q.ip, q.node), nil
	}
	return "", fmt.Errorf("lab %s: no two pods on one node", n.cni)
}

// leftoverVeths lists the pods' veths left in the lab's node netns after
// the pods were deleted (CNI DEL must have removed them).
func leftoverVeths(n *labNet) []string {
	var left []string
	for _, nr := range n.l.Nodes {
		out, err := exec.Command("ip", "-n", nr.Netns, "-o", "link", "show", "type", "veth").Output()
		if err != nil {
			left = append(left, nr.Name+": "+err.Error())
			continue
		}
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			f := strings.Fields(line)
			if len(f) < 2 {
				continue
			}
			// eth0 is the node's own link to the fabric.
			if name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@"); name != "eth0" {
				left = append(left, nr.Name+"/"+name)
			}
		}
	}
	return left
}

// benchLab brings both labs up, warms each with one pod per node, then runs
// the rounds alternating between the labs (which goes first alternates
// too), and takes both labs down.
func (b *bench) benchLab(ctx context.Context) *labResult {
	cfg := b.cfg
	res := &labResult{nodes: cfg.labNodes, pods: cfg.labPods, rounds: cfg.labRounds, serial: cfg.labSerial}
	b.reapBenchLabs()
	b.logf("lab: bringing up a %d-node lab with anet", cfg.labNodes)
	res.anet = b.upLab(ctx, lab.CNIAnet)
	b.logf("lab: anet lab up in %s; bringing up a %d-node lab with bridge + host-local", res.anet.up.Round(100*time.Millisecond), cfg.labNodes)
	res.bridge = b.upLab(ctx, lab.CNIBridge)
	b.logf("lab: bridge lab up in %s", res.bridge.up.Round(100*time.Millisecond))
	nets := []*labNet{res.anet, res.bridge}

	for _, n := range nets {
		w, err := startWatch(ctx, n.l, "anet-bench")
		if err != nil {
			b.t.Fatalf("lab %s: watch: %v", n.cni, err)
		}
		n.w = w
	}
	// Warm-up (not counted): two pods per node on each lab, and a ping
	// between two of them. Their DELETED events can only come through a
	// live watch, so once they are seen the watch is known to be
	// established before the measured pods exist.
	for _, n := range nets {
		b.logf("lab %s: warm-up, %d pods", n.cni, 2*cfg.labNodes)
		_, _, _, _, pods := b.runPods(ctx, n, "warm", 2*cfg.labNodes, func() {
			pair, err := b.pingPods(n, "warm", 2*cfg.labNodes)
			if err != nil {
				res.checks = append(res.checks, "FAIL: "+err.Error())
			} else {
				res.checks = append(res.checks, fmt.Sprintf("ok: lab %s: two pods of one node answer ping (%s)", n.cni, pair))
			}
		})
		if err := checkPods(n, pods); err != nil {
			b.t.Fatal(err)
		}
	}

	// One pod at a time: the latency of a pod start on an idle node, the
	// labs alternating pod by pod. kubelet sees a started container at its
	// next PLEG relist (every second); a random pause before each create
	// spreads the creates over that second instead of locking them to
	// one phase of it.
	for i := range cfg.labSerial {
		for _, n := range nets {
			select {
			case <-ctx.Done():
				b.t.Fatal(ctx.Err())
			case <-time.After(time.Duration(mrand.Int64N(int64(time.Second)))):
			}
			lat, _, _, _, pods := b.runPods(ctx, n, fmt.Sprintf("s%d", i), 1, nil)
			if err := checkPods(n, pods); err != nil {
				res.checks = append(res.checks, "FAIL: "+err.Error())
			}
			n.serial = append(n.serial, lat...)
		}
	}
	for _, n := range nets {
		b.logf("lab %s: one at a time: %d pods, p50 %.0f ms, max %.0f ms", n.cni, len(n.serial),
			stats.Median(stats.Millis(n.serial)), stats.Percentile(stats.Millis(n.serial), 100))
	}

	for r := 1; r <= cfg.labRounds; r++ {
		order := nets
		if r%2 == 0 {
			order = []*labNet{res.bridge, res.anet}
		}
		for _, n := range order {
			group := fmt.Sprintf("r%d", r)
			lat, wall, del, perNode := b.runPodsChecked(ctx, n, group, cfg.labPods, res)
			n.lat = append(n.lat, lat...)
			n.rates = append(n.rates, float64(len(lat))/wall.Seconds())
			n.dels = append(n.dels, float64(len(lat))/del.Seconds())
			n.rounds = append(n.rounds, labRound{round: r, wall: wall, perNode: perNode})
			ms := stats.Millis(lat)
			b.logf("lab %s: round %d: %d pods Ready in %s (%.1f pods/s), p50 %.0f ms, max %.0f ms; deleted in %s; per node %v",
				n.cni, r, len(lat), wall.Round(10*time.Millisecond), float64(len(lat))/wall.Seconds(),
				stats.Median(ms), stats.Percentile(ms, 100), del.Round(10*time.Millisecond), perNode)
		}
	}

	for _, n := range nets {
		if left := leftoverVeths(n); len(left) > 0 {
			res.checks = append(res.checks, fmt.Sprintf("FAIL: lab %s: veths left after the pods were deleted: %s", n.cni, strings.Join(left, " ")))
		} else {
			res.checks = append(res.checks, fmt.Sprintf("ok: lab %s: no veth left in the node netns after the pods were deleted", n.cni))
		}
	}
	for _, n := range nets {
		b.downLab(n)
		b.logf("lab %s: down in %s", n.cni, n.down.Round(100*time.Millisecond))
	}
	return res
}

// runPodsChecked is runPods plus checks: addresses from the nodes' pod
// CIDRs, pods spread evenly over the nodes.
func (b *bench) runPodsChecked(ctx context.Context, n *labNet, group string, count int, res *labResult) ([]time.Duration, time.Duration, time.Duration, map[string]int) {
	lat, wall, del, perNode, pods := b.runPods(ctx, n, group, count, nil)
	if err := checkPods(n, pods); err != nil {
		res.checks = append(res.checks, "FAIL: "+err.Error())
	}
	var counts []int
	for _, c := range perNode {
		counts = append(counts, c)
	}
	sort.Ints(counts)
	if len(perNode) != len(n.l.Nodes) || counts[len(counts)-1]-counts[0] > 1 {
		res.checks = append(res.checks, fmt.Sprintf("FAIL: lab %s: %s: pods not spread evenly: %v", n.cni, group, perNode))
	}
	return lat, wall, del, perNode
}

// rows are the report's table: anet, bridge, ratio.
func (r *labResult) rows() [][]string {
	a, br := r.anet, r.bridge
	ms := func(n *labNet, p float64) float64 { return stats.Percentile(stats.Millis(n.lat), p) }
	one := func(n *labNet, p float64) float64 { return stats.Percentile(stats.Millis(n.serial), p) }
	row := func(name string, x, y float64, unit string) []string {
		return []string{name, num(x) + unit, num(y) + unit, ratio(x, y)}
	}
	secs := func(d time.Duration) float64 { return d.Seconds() }
	return [][]string{
		row(fmt.Sprintf("pod start p50, create → Ready, one pod at a time (%d per lab)", len(a.serial)), one(a, 50), one(br, 50), " ms"),
		row("pod start mean, one pod at a time", stats.Mean(stats.Millis(a.serial)), stats.Mean(stats.Millis(br.serial)), " ms"),
		row("pod start max, one pod at a time", one(a, 100), one(br, 100), " ms"),
		row(fmt.Sprintf("pod start p50, %d created at once (%d pods per lab)", r.pods, len(a.lat)), ms(a, 50), ms(br, 50), " ms"),
		row(fmt.Sprintf("pod start p90, %d at once", r.pods), ms(a, 90), ms(br, 90), " ms"),
		row(fmt.Sprintf("pod start p99, %d at once (≈ the max)", r.pods), ms(a, 99), ms(br, 99), " ms"),
		row(fmt.Sprintf("pods/s, %d created at once (median of %d rounds)", r.pods, r.rounds), stats.Median(a.rates), stats.Median(br.rates), " pods/s"),
		row(fmt.Sprintf("pods/s deleted, delete → gone (median of %d rounds)", r.rounds), stats.Median(a.dels), stats.Median(br.dels), " pods/s"),
		row(fmt.Sprintf("lab up, %d nodes Ready (one sample)", r.nodes), secs(a.up), secs(br.up), " s"),
		row("lab down (one sample)", secs(a.down), secs(br.down), " s"),
	}
}

// runs lists every sample of both labs.
func (r *labResult) runs() [][]string {
	var rows [][]string
	for _, n := range []*labNet{r.anet, r.bridge} {
		var one, rates, dels []string
		for _, ms := range stats.Millis(n.serial) {
			one = append(one, fmt.Sprintf("%.0f", ms))
		}
		for i := range n.rates {
			rates = append(rates, num(n.rates[i]))
			dels = append(dels, num(n.dels[i]))
		}
		rows = append(rows, []string{n.cni, strings.Join(one, ", "), strings.Join(rates, ", "), strings.Join(dels, ", ")})
	}
	return rows
}
