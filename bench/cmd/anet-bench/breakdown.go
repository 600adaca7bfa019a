//go:build linux

package main

import (
	"bufio"
	"bytes"
	"context"
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

// breakdown is where the time of one ADD goes, from what can be measured
// without changing the plugins: bare binary starts, anetd's own log
// timestamps around the serial ADDs, a few ADDs under strace, and
// anet-cni's ANET_CNI_TRACE when the build has it.
type breakdown struct {
	starts     []phase // CNI_COMMAND=VERSION, start to exit, per binary
	startRuns  int
	logPhases  []phase // anet serial ADDs split by anetd's log lines
	logSamples int
	logNote    string

	straceRuns   int
	straceAnet   []phase
	straceBridge []phase
	straceNote   string

	trace     string // ANET_CNI_TRACE's stderr of one ADD, as printed
	traceNote string
}

type phase struct {
	name string
	d    time.Duration
}

func (b *bench) breakdownADD(ctx context.Context, anet, bridge *network, ap, bp []*pod, calls []addCall) *breakdown {
	bd := &breakdown{startRuns: 20, straceRuns: 5}
	bd.starts = b.binaryStarts(bd.startRuns)
	bd.logPhases, bd.logSamples, bd.logNote = anetdLogPhases(anet.logs.String(), calls)
	if ctx.Err() != nil {
		return bd
	}
	if _, err := exec.LookPath("strace"); err != nil {
		bd.straceNote = "strace is not installed (scripts/setup.sh installs it)"
	} else {
		bd.straceAnet, bd.straceBridge, bd.straceNote = b.straceADDs(anet, bridge, ap, bp, bd.straceRuns)
	}
	bd.trace, bd.traceNote = b.cniTrace(anet, ap[len(ap)-1])
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
		out = append(out, phase{n, medianDur(ds[i])})
	}
	return out
}

func medianDur(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return -1
	}
	return time.Duration(stats.Median(stats.Millis(ds)) * float64(time.Millisecond))
}

// anetdLogPhases splits each serial anet ADD at anetd's "address allocated"
// (end of the Allocate call, after the allocation is on disk) and
// "endpoint registered" (end of the PutEndpoint call) log lines. slog's
// text handler stamps milliseconds, so each phase may read up to 1 ms off;
// medians of many ADDs are still telling.
func anetdLogPhases(log string, calls []addCall) ([]phase, int, string) {
	alloc, reg := map[string]time.Time{}, map[string]time.Time{}
	sc := bufio.NewScanner(strings.NewReader(log))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		var m map[string]time.Time
		switch {
		case strings.Contains(l, `msg="address allocated"`):
			m = alloc
		case strings.Contains(l, `msg="endpoint registered"`):
			m = reg
		default:
			continue
		}
		ts, id := logField(l, "time"), logField(l, "containerID")
		t, err := time.Parse("2006-01-02T15:04:05.000Z07:00", ts)
		if err == nil && id != "" {
			m[id] = t
		}
	}
	var toAlloc, between, after []time.Duration
	for _, c := range calls {
		a, ok1 := alloc[c.containerID]
		r, ok2 := reg[c.containerID]
		if !ok1 || !ok2 || c.start.IsZero() {
			continue
		}
		toAlloc = append(toAlloc, a.Sub(c.start))
		between = append(between, r.Sub(a))
		after = append(after, c.end.Sub(r))
	}
	if len(toAlloc) == 0 {
		return nil, 0, "anetd's log has no \"address allocated\" / \"endpoint registered\" lines with container IDs (its messages changed?)"
	}
	return []phase{
		{"plugin start → anetd logs \"address allocated\" (process start, Go runtime, config, Allocate request, allocation written and fsynced)", medianDur(toAlloc)},
		{"\"address allocated\" → \"endpoint registered\" (Allocate response, veth pair, addresses, routes, neighbours, sysctls, TCX attach, link pins, PutEndpoint request and anetd's map writes and record)", medianDur(between)},
		{"\"endpoint registered\" → plugin reaped (PutEndpoint response, result on stdout, exit)", medianDur(after)},
	}, len(toAlloc), ""
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
// others run untraced, so the overhead stays small).
type straceExec struct {
	timedExec
	out string
}

func (e *straceExec) ExecPlugin(ctx context.Context, pluginPath string, stdin []byte, environ []string) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	c := exec.CommandContext(ctx, "strace", "-f", "--seccomp-bpf", "-ttt", "-T",
		"-e", "trace=execve,connect,setns,bpf,exit_group", "-o", e.out, pluginPath)
	c.Env, c.Stdin, c.Stdout, c.Stderr = environ, bytes.NewReader(stdin), &stdout, &stderr
	if err := c.Run(); err != nil {
		return nil, fmt.Errorf("strace %s: %w (%s)", filepath.Base(pluginPath), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// straceADDs runs n ADDs per network under strace (each followed by its
// DEL, untraced) and returns the median of each phase.
func (b *bench) straceADDs(anet, bridge *network, ap, bp []*pod, n int) (a, br []phase, note string) {
	dir := b.t.TempDir()
	var ar, brr [][]time.Duration
	var notes []string
	for i := range n {
		for k, w := range []*network{anet, bridge} {
			p := []*pod{ap[i], bp[i]}[k]
			p.containerID = fmt.Sprintf("%s-strace%d-%s", b.runID, i, p.name)
			out := filepath.Join(dir, fmt.Sprintf("%s-%d", w.name, i))
			orig := w.cni
			w.cni = libcni.NewCNIConfigWithCacheDir([]string{b.bin}, w.cache, &straceExec{out: out})
			_, err := w.add(p)
			w.cni = orig
			if _, derr := w.del(p); derr != nil && err == nil {
				err = derr
			}
			if err != nil {
				b.t.Fatalf("strace run: %v", err)
			}
			tr, err := readStrace(out)
			if err != nil {
				b.t.Fatalf("strace output: %v", err)
			}
			if k == 0 {
				ds, msg := anetStracePhases(tr)
				if msg != "" {
					notes = append(notes, msg)
				} else {
					ar = append(ar, ds)
				}
			} else {
				ds, msg := bridgeStracePhases(tr)
				if msg != "" {
					notes = append(notes, msg)
				} else {
					brr = append(brr, ds)
				}
			}
		}
	}
	a = medianPhases(anetStraceNames, ar)
	br = medianPhases(bridgeStraceNames, brr)
	if len(notes) > 0 {
		note = fmt.Sprintf("%d traces not split: %s", len(notes), notes[0])
	}
	return a, br, note
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
		out = append(out, phase{n, medianDur(ds)})
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

var anetStraceNames = []string{
	"process start, Go runtime, config, netns open (exec → connect to anetd)",
	"Allocate round trip (connect → first setns)",
	"veth pair, addresses, routes, neighbours, sysctls (first setns → first bpf)",
	"attach: open pinned programs, two TCX links, link pins (first bpf → end of last bpf)",
	"  of which the two BPF_LINK_CREATE (TCX attach) syscalls",
	"PutEndpoint round trip, result, exit (end of last bpf → exit)",
	"total under strace",
}

// anetStracePhases splits one anet-cni ADD at its first connect (Allocate),
// the first setns after it (into the pod netns), its bpf calls (attach) and
// its second connect (PutEndpoint).
func anetStracePhases(evs []sysEvent) ([]time.Duration, string) {
	main := evs[0].pid
	t0 := evs[0].t
	var c1, c2, s1, b1, bEnd, exit, linkCreate float64
	for _, e := range evs {
		switch {
		case e.name == "connect" || e.name == "connect resumed":
			if e.name == "connect" {
				if c1 == 0 {
					c1 = e.t
				} else if c2 == 0 && bEnd != 0 {
					c2 = e.t
				}
			}
		case e.name == "setns":
			if c1 != 0 && s1 == 0 {
				s1 = e.t
			}
		case e.name == "bpf" || e.name == "bpf resumed":
			if e.name == "bpf" && b1 == 0 {
				b1 = e.t
			}
			if c2 == 0 {
				bEnd = e.t + e.dur
			}
			if strings.Contains(e.line, "BPF_LINK_CREATE") {
				linkCreate += e.dur
			} else if e.name == "bpf resumed" && e.dur > 0 {
				// The LINK_CREATE whose start was interrupted in the
				// log by another thread: its time is on the resume.
				linkCreate += e.dur
			}
		case e.name == "+++":
			if e.pid == main {
				exit = e.t
			}
		}
	}
	if c1 == 0 || s1 == 0 || b1 == 0 || c2 == 0 || exit == 0 {
		return nil, "anet-cni's trace lacks a marker (connect, setns, bpf, second connect, exit): its steps changed"
	}
	sec := func(x float64) time.Duration { return time.Duration(x * float64(time.Second)) }
	return []time.Duration{sec(c1 - t0), sec(s1 - c1), sec(b1 - s1), sec(bEnd - b1), sec(linkCreate), sec(exit - bEnd), sec(exit - t0)}, ""
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

// cniTrace runs one anet ADD with ANET_CNI_TRACE=1 in the environment
// (libcni passes the runtime's environment on to the plugin) and returns
// what the plugin wrote on stderr.
func (b *bench) cniTrace(anet *network, p *pod) (string, string) {
	p.containerID = b.runID + "-trace-" + p.name
	if err := os.Setenv("ANET_CNI_TRACE", "1"); err != nil {
		return "", err.Error()
	}
	t, err := anet.addTimed(p)
	_ = os.Unsetenv("ANET_CNI_TRACE")
	if err != nil {
		b.t.Fatal(err)
	}
	if _, err := anet.del(p); err != nil {
		b.t.Fatal(err)
	}
	tr := strings.TrimSpace(string(t.rec.stderr))
	if tr == "" {
		return "", "not available in this build (anet-cni wrote nothing on stderr with ANET_CNI_TRACE=1)"
	}
	return tr, fmt.Sprintf("one ADD, %.1f ms in the plugin process", float64(t.proc)/float64(time.Millisecond))
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
