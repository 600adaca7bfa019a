//go:build linux

package main

import (
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
	"golang.org/x/sys/unix"

	"github.com/anet-dev/anet/bench/internal/stats"
)

// breakdown is where the time of an ADD goes: bare binary starts, the
// steps anet-cni and anetd report with ANET_CNI_TRACE=1 on the serial ADDs
// of both attach modes, and a few bridge ADDs under strace (the reference
// plugins have no trace of their own).
type breakdown struct {
	starts    []phase // CNI_COMMAND=VERSION, start to exit, per binary
	startRuns int

	steps      []stepRow // medians per step of the traced ADDs, tc and tcx
	tcN, tcxN  int       // traced ADDs that were split
	traceNote  string    // why some or all ADDs could not be split
	sample     string    // the trace of the tc ADD closest to the median, as printed
	sampleCall time.Duration

	straceRuns   int
	straceBridge []phase
	straceNote   string
}

type phase struct {
	name string
	d    time.Duration
	note string // how the binary is linked, for binary starts
}

// linkage says whether an executable is linked statically or needs the
// dynamic loader (a Go binary built with cgo: it starts slower).
func linkage(path string) string {
	f, err := elf.Open(path)
	if err != nil {
		return "?"
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return "dynamically linked"
		}
	}
	return "static"
}

func (b *bench) breakdownADD(ctx context.Context, bridge *network, bp []*pod, tc, tcx []addTrace) *breakdown {
	bd := &breakdown{startRuns: 20, straceRuns: 5}
	bd.starts = b.binaryStarts(bd.startRuns)
	bd.steps, bd.tcN, bd.tcxN, bd.traceNote = traceRows(tc, tcx)
	bd.sample, bd.sampleCall = medianSample(tc)
	if ctx.Err() != nil {
		return bd
	}
	if _, err := exec.LookPath("strace"); err != nil {
		bd.straceNote = "strace is not installed (scripts/setup.sh installs it)"
	} else {
		bd.straceBridge, bd.straceNote = b.straceBridgeADDs(bridge, bp, bd.straceRuns)
	}
	return bd
}

// binaryStarts times `CNI_COMMAND=VERSION` of each plugin binary: a
// process start, the Go runtime, and an answer on stdout.
func (b *bench) binaryStarts(runs int) []phase {
	names := []string{"anet-cni", "bridge", "host-local"}
	ds := make([][]time.Duration, len(names))
	for range runs {
		for i, n := range names {
			c := exec.Command(filepath.Join(b.bin, n))
			c.Env = []string{"CNI_COMMAND=VERSION", "CNI_PATH=" + b.bin}
			c.Stdin = strings.NewReader(`{"cniVersion":"1.1.0"}`)
			start := time.Now()
			if err := c.Run(); err != nil {
				b.t.Fatalf("%s VERSION: %v", n, err)
			}
			ds[i] = append(ds[i], time.Since(start))
		}
	}
	var out []phase
	for i, n := range names {
		out = append(out, phase{n, medianDur(ds[i]), linkage(filepath.Join(b.bin, n))})
	}
	return out
}

func medianDur(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return -1
	}
	return time.Duration(stats.Median(stats.Millis(ds)) * float64(time.Millisecond))
}

// traceLine is one line of ANET_CNI_TRACE (plugins/anet-cni/trace.go):
//
//	anet-cni-trace verb=ADD container=<id> ifname=<if> step=<step> elapsed_us=<n> step_us=<n>
type traceLine struct {
	step          string
	elapsed, took time.Duration
}

// parseTrace returns the ADD trace lines in what a plugin wrote on
// stderr, in order; other lines are skipped.
func parseTrace(stderr string) ([]traceLine, error) {
	var out []traceLine
	for _, l := range strings.Split(stderr, "\n") {
		f := strings.Fields(l)
		if len(f) == 0 || f[0] != "anet-cni-trace" {
			continue
		}
		kv := map[string]string{}
		for _, x := range f[1:] {
			if k, v, ok := strings.Cut(x, "="); ok {
				kv[k] = v
			}
		}
		if kv["verb"] != "ADD" {
			continue
		}
		el, err1 := strconv.ParseInt(kv["elapsed_us"], 10, 64)
		st, err2 := strconv.ParseInt(kv["step_us"], 10, 64)
		if kv["step"] == "" || err1 != nil || err2 != nil {
			return nil, fmt.Errorf("malformed trace line %q", l)
		}
		out = append(out, traceLine{kv["step"], time.Duration(el) * time.Microsecond, time.Duration(st) * time.Microsecond})
	}
	return out, nil
}

// addTrace is one traced ADD: libcni's call, the plugin process in it,
// and the plugin's trace.
type addTrace struct {
	containerID string
	call, proc  time.Duration
	lines       []traceLine
	raw         string // the trace lines as printed
	err         string // why the trace could not be read
}

func newAddTrace(containerID string, t opTiming) addTrace {
	a := addTrace{containerID: containerID, call: t.call, proc: t.proc}
	var raw []string
	for _, l := range strings.Split(string(t.rec.stderr), "\n") {
		if strings.HasPrefix(l, "anet-cni-trace ") {
			raw = append(raw, l)
		}
	}
	a.raw = strings.Join(raw, "\n")
	lines, err := parseTrace(a.raw)
	switch {
	case err != nil:
		a.err = err.Error()
	case len(lines) == 0:
		a.err = "anet-cni wrote no trace line with ANET_CNI_TRACE=1 (a build without the trace?)"
	}
	a.lines = lines
	return a
}

// Keys of the breakdown's rows that are not trace steps.
const (
	keyLibcni    = "libcni"
	keyOutside   = "outside"
	keyTransport = "transport"
	keyProc      = "proc"
	keyCall      = "call"
)

// traceRowText says what each row of the breakdown covers.
var traceRowText = map[string]string{
	keyLibcni:        "libcni around the plugin (config, CNI_ARGS, result cache): the call less the plugin process",
	keyOutside:       "plugin process outside its trace: exec, Go runtime up to the plugin's package init, exit, reaped",
	"start":          "start: package init → skel has read the environment and stdin",
	"config":         "config: config and CNI_ARGS parsed, pod netns opened",
	"add":            "add: the one request to anetd (POST /v1/endpoints, netns fd passed), round trip",
	"anetd.received": "anetd: the request reached anetd's handler (connect, fd passing, accept, headers; from the plugin's clock)",
	"anetd.decoded":  "anetd: request decoded, netns descriptor taken and checked",
	"anetd.reserved": "anetd: address reserved (in memory)",
	"anetd.veth":     "anetd: veth pair made, pod side in the pod netns, both ends down",
	"anetd.attached": "anetd: programs attached on the host side (tc clsact filters or TCX links)",
	"anetd.pod":      "anetd: pod side IPv6 off, up, address, routes, neighbour",
	"anetd.host":     "anetd: host side up, route and neighbour to the pod",
	"anetd.mapped":   "anetd: endpoint map entries written",
	"anetd.recorded": "anetd: endpoint record in place: the wait for its write into a ready file and fdatasync (begun after the attach, in the background; the plain write and fsync when none is ready) and its rename",
	keyTransport:     "request outside anetd's steps: anetd's answer encoded and sent, read and decoded by the plugin",
	"result":         "result: CNI result printed on stdout",
	keyProc:          "**plugin process, start to reaped**",
	keyCall:          "**libcni's whole ADD call** (the ADD p50 rows above)",
}

// parts splits one traced ADD into the rows of the breakdown, in order.
func (a addTrace) parts() ([]string, map[string]time.Duration) {
	var keys []string
	v := map[string]time.Duration{}
	put := func(k string, d time.Duration) {
		if _, ok := v[k]; !ok {
			keys = append(keys, k)
		}
		v[k] = d
	}
	put(keyLibcni, a.call-a.proc)
	var end, anetd time.Duration
	hasAdd := false
	for _, l := range a.lines {
		if strings.HasPrefix(l.step, "anetd.") {
			anetd += l.took
		} else {
			end = max(end, l.elapsed)
		}
		hasAdd = hasAdd || l.step == "add"
	}
	put(keyOutside, a.proc-end)
	for _, l := range a.lines {
		put(l.step, l.took)
	}
	if hasAdd {
		put(keyTransport, v["add"]-anetd)
	}
	put(keyProc, a.proc)
	put(keyCall, a.call)
	return keys, v
}

// stepRow is one row of the breakdown: what it covers and its median over
// the traced ADDs of each attach mode (-1: none).
type stepRow struct {
	key, what string
	indent    bool
	tc, tcx   time.Duration
}

// traceRows takes the median of each part over the traced ADDs of each
// mode; the row order is that of the first ADD that has the step, with
// anetd's steps and the transport after "add".
func traceRows(tc, tcx []addTrace) ([]stepRow, int, int, string) {
	var order []string
	seen := map[string]bool{}
	vals := [2]map[string][]time.Duration{{}, {}}
	n := [2]int{}
	var notes []string
	for m, ts := range [][]addTrace{tc, tcx} {
		for _, a := range ts {
			if a.err != "" {
				notes = append(notes, a.err)
				continue
			}
			n[m]++
			keys, v := a.parts()
			for _, k := range keys {
				if !seen[k] {
					seen[k] = true
					order = append(order, k)
				}
				vals[m][k] = append(vals[m][k], v[k])
			}
		}
	}
	// anetd's steps and the transport go right after "add", the totals last.
	var plugin, inner, totals []string
	for _, k := range order {
		switch {
		case strings.HasPrefix(k, "anetd."):
			inner = append(inner, k)
		case k == keyProc || k == keyCall:
			totals = append(totals, k)
		case k != keyTransport:
			plugin = append(plugin, k)
		}
	}
	if seen[keyTransport] {
		inner = append(inner, keyTransport)
	}
	var rows []stepRow
	add := func(k string, indent bool) {
		what := traceRowText[k]
		if what == "" {
			what = k
		}
		rows = append(rows, stepRow{key: k, what: what, indent: indent, tc: medianDur(vals[0][k]), tcx: medianDur(vals[1][k])})
	}
	for _, k := range plugin {
		add(k, false)
		if k == "add" {
			for _, i := range inner {
				add(i, true)
			}
		}
	}
	for _, k := range totals {
		add(k, false)
	}
	note := ""
	if len(notes) > 0 {
		note = fmt.Sprintf("%d traced ADDs could not be split, the first: %s", len(notes), notes[0])
	}
	return rows, n[0], n[1], note
}

// medianSample is the trace of the ADD whose call is closest to the
// median, and that call's time.
func medianSample(ts []addTrace) (string, time.Duration) {
	var calls []time.Duration
	for _, a := range ts {
		if a.err == "" {
			calls = append(calls, a.call)
		}
	}
	if len(calls) == 0 {
		return "", 0
	}
	med := medianDur(calls)
	best := -1
	for i, a := range ts {
		if a.err != "" {
			continue
		}
		if best < 0 || (a.call-med).Abs() < (ts[best].call-med).Abs() {
			best = i
		}
	}
	return ts[best].raw, ts[best].call
}

// logField returns the value of key=value in an slog text line.
func logField(l, key string) string {
	i := strings.Index(l, " "+key+"=")
	if i < 0 {
		if !strings.HasPrefix(l, key+"=") {
			return ""
		}
		i = -1
	}
	v := l[i+len(key)+2:]
	if strings.HasPrefix(v, `"`) {
		if uq, err := strconv.QuotedPrefix(v); err == nil {
			s, _ := strconv.Unquote(uq)
			return s
		}
	}
	if j := strings.IndexByte(v, ' '); j >= 0 {
		v = v[:j]
	}
	return v
}

// straceExec runs the plugin as libcni would, under `strace -f`, tracing
// only the syscalls that mark the plugins' steps (with --seccomp-bpf the
// others run untraced, so the overhead stays small): bridge's exec of
// host-local and the processes' exits.
const straceSyscalls = "trace=execve,exit_group"

type straceExec struct {
	timedExec
	out string
}

func (e *straceExec) ExecPlugin(ctx context.Context, pluginPath string, stdin []byte, environ []string) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	c := exec.CommandContext(ctx, "strace", "-f", "--seccomp-bpf", "-ttt", "-T",
		"-e", straceSyscalls, "-o", e.out, pluginPath)
	c.Env, c.Stdin, c.Stdout, c.Stderr = environ, bytes.NewReader(stdin), &stdout, &stderr
	if err := c.Run(); err != nil {
		return nil, fmt.Errorf("strace %s: %w (%s)", filepath.Base(pluginPath), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// straceBridgeADDs runs n bridge ADDs under strace (each followed by its
// DEL, untraced) and returns the median of each phase. anet's ADD is
// left out: its plugin does one request and the work is in anetd, which
// ANET_CNI_TRACE splits better than syscalls of the plugin could.
func (b *bench) straceBridgeADDs(bridge *network, bp []*pod, n int) (br []phase, note string) {
	dir := b.t.TempDir()
	var runs [][]time.Duration
	var notes []string
	for i := range n {
		p := bp[i]
		p.containerID = fmt.Sprintf("%s-strace%d-%s", b.runID, i, p.name)
		out := filepath.Join(dir, fmt.Sprintf("bridge-%d", i))
		orig := bridge.cni
		bridge.cni = libcni.NewCNIConfigWithCacheDir([]string{b.bin}, bridge.cache, &straceExec{out: out})
		_, err := bridge.add(p)
		bridge.cni = orig
		if _, derr := bridge.del(p); derr != nil && err == nil {
			err = derr
		}
		if err != nil {
			b.t.Fatalf("strace run: %v", err)
		}
		tr, err := readStrace(out)
		if err != nil {
			b.t.Fatalf("strace output: %v", err)
		}
		ds, msg := bridgeStracePhases(tr)
		if msg != "" {
			notes = append(notes, msg)
		} else {
			runs = append(runs, ds)
		}
	}
	br = medianPhases(bridgeStraceNames, runs)
	if len(notes) > 0 {
		note = fmt.Sprintf("%d traces not split: %s", len(notes), notes[0])
	}
	return br, note
}

func medianPhases(names []string, runs [][]time.Duration) []phase {
	if len(runs) == 0 {
		return nil
	}
	var out []phase
	for i, n := range names {
		var ds []time.Duration
		for _, r := range runs {
			ds = append(ds, r[i])
		}
		out = append(out, phase{name: n, d: medianDur(ds)})
	}
	return out
}

// sysEvent is one line of `strace -f -ttt -T`: pid, time, the call's name,
// its first argument's text, and its duration (the -T figure).
type sysEvent struct {
	pid  int
	t    float64 // seconds since the epoch
	name string  // "execve", "bpf", …, or "+++" for an exit
	line string
	dur  float64
}

func readStrace(path string) ([]sysEvent, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var evs []sysEvent
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.SplitN(l, " ", 3)
		if len(f) < 3 {
			continue
		}
		pid, err1 := strconv.Atoi(f[0])
		ts, err2 := strconv.ParseFloat(strings.TrimSpace(f[1]), 64)
		if err1 != nil || err2 != nil {
			// "PID  TIME": strace pads the pid column.
			g := strings.Fields(l)
			if len(g) < 3 {
				continue
			}
			pid, err1 = strconv.Atoi(g[0])
			ts, err2 = strconv.ParseFloat(g[1], 64)
			if err1 != nil || err2 != nil {
				continue
			}
			f = []string{g[0], g[1], strings.Join(g[2:], " ")}
		}
		rest := f[2]
		e := sysEvent{pid: pid, t: ts, line: rest}
		switch {
		case strings.HasPrefix(rest, "+++"):
			e.name = "+++"
		case strings.HasPrefix(rest, "<..."):
			g := strings.Fields(rest)
			if len(g) > 1 {
				e.name = g[1] + " resumed"
			}
		default:
			if i := strings.IndexByte(rest, '('); i > 0 {
				e.name = rest[:i]
			}
		}
		if i := strings.LastIndex(rest, "<"); i >= 0 && strings.HasSuffix(rest, ">") {
			e.dur, _ = strconv.ParseFloat(rest[i+1:len(rest)-1], 64)
		}
		evs = append(evs, e)
	}
	if len(evs) == 0 {
		return nil, fmt.Errorf("%s: empty", path)
	}
	return evs, nil
}

var bridgeStraceNames = []string{
	"bridge start, Go runtime, bridge and veth pair (exec → exec of host-local)",
	"host-local: process start, Go runtime, lock, allocation, exit",
	"bridge: addresses, routes, gateway on the bridge, port state, exit (host-local exit → exit)",
	"total under strace",
}

func bridgeStracePhases(evs []sysEvent) ([]time.Duration, string) {
	main := evs[0].pid
	t0 := evs[0].t
	var h0, h1, exit float64
	hpid := 0
	for _, e := range evs {
		switch {
		case e.name == "execve" && e.pid != main && strings.Contains(e.line, "host-local") && h0 == 0:
			h0, hpid = e.t, e.pid
		case e.name == "+++" && hpid != 0 && e.pid == hpid:
			h1 = e.t
		case e.name == "+++" && e.pid == main:
			exit = e.t
		}
	}
	if h0 == 0 || h1 == 0 || exit == 0 {
		return nil, "bridge's trace lacks a marker (exec of host-local, its exit, bridge's exit)"
	}
	sec := func(x float64) time.Duration { return time.Duration(x * float64(time.Second)) }
	return []time.Duration{sec(h0 - t0), sec(h1 - h0), sec(exit - h1), sec(exit - t0)}, ""
}

// fsType names the filesystem that holds dir.
func fsType(dir string) string {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return "unknown (" + err.Error() + ")"
	}
	switch st.Type {
	case unix.EXT4_SUPER_MAGIC:
		return "ext4"
	case unix.TMPFS_MAGIC:
		return "tmpfs"
	case unix.XFS_SUPER_MAGIC:
		return "xfs"
	case unix.BTRFS_SUPER_MAGIC:
		return "btrfs"
	case unix.OVERLAYFS_SUPER_MAGIC:
		return "overlayfs"
	}
	return fmt.Sprintf("0x%x", st.Type)
}
