//go:build linux

package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/anet-dev/anet/bench/internal/stats"
)

// setup is one way of joining two network namespaces on one node.
type setup struct {
	name           string
	client, server *pod
}

const (
	rrPort   = 11111
	tputPort = 5201
)

// trafficSetups wires the three pairs: two anet pods, two bridge pods, and
// a bare veth pair with /30 addresses (no programs, no bridge: the limit).
func (b *bench) trafficSetups(anet, bridge *network) []*setup {
	var out []*setup
	for _, w := range []*network{anet, bridge} {
		c, s := b.newPod(w, "tc-"+w.name[:1]), b.newPod(w, "ts-"+w.name[:1])
		for _, p := range []*pod{c, s} {
			p.containerID = b.runID + "-traffic-" + p.name
			if _, err := w.add(p); err != nil {
				b.t.Fatal(err)
			}
			// anet-cni turns IPv6 off in its pods; do the same everywhere
			// so that no setup carries IPv6 chatter.
			_ = p.ns.Do(func(ns.NetNS) error { return disableIPv6(p.ifName) })
		}
		name := "anet"
		if w == bridge {
			name = "bridge"
		}
		out = append(out, &setup{name: name, client: c, server: s})
	}
	veth := b.vethPair()
	return []*setup{out[0], veth, out[1]}
}

func disableIPv6(ifName string) error {
	return os.WriteFile("/proc/sys/net/ipv6/conf/"+ifName+"/disable_ipv6", []byte("1"), 0o644)
}

// vethPair makes two netns joined by one veth pair, 10.98.0.1/30 and
// 10.98.0.2/30.
func (b *bench) vethPair() *setup {
	scratch := &network{}
	c, s := b.newPod(scratch, "veth-c"), b.newPod(scratch, "veth-s")
	c.ip, s.ip = netip.MustParseAddr("10.98.0.1"), netip.MustParseAddr("10.98.0.2")
	err := c.ns.Do(func(ns.NetNS) error {
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0", MTU: 1500}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(s.ns.Fd()))}
		if err := netlink.LinkAdd(v); err != nil {
			return fmt.Errorf("veth: %w", err)
		}
		return nil
	})
	if err != nil {
		b.t.Fatal(err)
	}
	for _, p := range []*pod{c, s} {
		err := p.ns.Do(func(ns.NetNS) error {
			l, err := netlink.LinkByName("eth0")
			if err != nil {
				return err
			}
			_ = disableIPv6("eth0")
			addr := &netlink.Addr{IPNet: &net.IPNet{IP: p.ip.AsSlice(), Mask: net.CIDRMask(30, 32)}}
			if err := netlink.AddrAdd(l, addr); err != nil {
				return err
			}
			return netlink.LinkSetUp(l)
		})
		if err != nil {
			b.t.Fatalf("veth %s: %v", p.name, err)
		}
	}
	return &setup{name: "veth", client: c, server: s}
}

// proc is a process the bench started; every one is in b.procs until it
// has been waited for, so its PID cannot be reused meanwhile.
type proc struct {
	cmd  *exec.Cmd
	out  *bytes.Buffer
	done chan struct{}
	err  error
}

// start runs argv inside the netns of p, in a process group of its own
// (a Ctrl-C reaches the bench, which stops it; not the tool directly).
// nsenter and taskset exec in place: the PID is the tool's.
func (b *bench) start(p *pod, argv ...string) (*proc, error) {
	cmd := exec.Command("nsenter", append([]string{"--net=" + p.ns.Path(), "--"}, argv...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	pr := &proc{cmd: cmd, out: &bytes.Buffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = pr.out, pr.out
	b.procMu.Lock()
	defer b.procMu.Unlock()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", strings.Join(argv, " "), err)
	}
	b.procs[cmd.Process.Pid] = pr
	go func() {
		pr.err = cmd.Wait()
		b.procMu.Lock()
		delete(b.procs, cmd.Process.Pid)
		b.procMu.Unlock()
		close(pr.done)
	}()
	return pr, nil
}

// stop sends SIGTERM, then SIGKILL after two seconds, and waits.
func (pr *proc) stop() {
	select {
	case <-pr.done:
		return
	default:
	}
	_ = pr.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-pr.done:
	case <-time.After(2 * time.Second):
		_ = pr.cmd.Process.Kill()
		<-pr.done
	}
}

// wait waits for the process to exit, at most limit, or until ctx ends,
// and then stops it.
func (pr *proc) wait(ctx context.Context, limit time.Duration) error {
	select {
	case <-pr.done:
		return pr.err
	case <-ctx.Done():
		pr.stop()
		return ctx.Err()
	case <-time.After(limit):
		pr.stop()
		return fmt.Errorf("%s did not finish within %s", pr.cmd.Args, limit)
	}
}

// stopAll stops every process still running (a cleanup).
func (b *bench) stopAll() {
	b.procMu.Lock()
	var all []*proc
	for _, p := range b.procs {
		all = append(all, p)
	}
	b.procMu.Unlock()
	for _, p := range all {
		p.stop()
	}
}

// listening tells whether a TCP socket listens on port in p's netns, from
// /proc/thread-self/net/tcp read on a thread inside it (no probe
// connection: iperf3 -1 serves exactly one).
func listening(p *pod, port int) bool {
	found := false
	_ = p.ns.Do(func(ns.NetNS) error {
		f, err := os.Open("/proc/thread-self/net/tcp")
		if err != nil {
			return err
		}
		defer f.Close()
		want := fmt.Sprintf(":%04X", port)
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fs := strings.Fields(sc.Text())
			if len(fs) > 3 && strings.HasSuffix(fs[1], want) && fs[3] == "0A" {
				found = true
			}
		}
		return nil
	})
	return found
}

// serve starts a server and waits until it listens.
func (b *bench) serve(ctx context.Context, s *setup, port int, argv ...string) (*proc, error) {
	srv, err := b.start(s.server, argv...)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(5 * time.Second)
	for !listening(s.server, port) {
		select {
		case <-srv.done:
			return nil, fmt.Errorf("%s exited: %v\n%s", argv[0], srv.err, srv.out)
		case <-ctx.Done():
			srv.stop()
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			srv.stop()
			return nil, fmt.Errorf("%s not listening after 5s\n%s", argv[0], srv.out)
		}
	}
	return srv, nil
}

// rrResult is one sockperf ping-pong run.
type rrResult struct {
	perSec   float64 // round trips per second over the valid duration
	p50, p99 float64 // round-trip time, µs
}

// sockperfRR runs a TCP ping-pong between the setup's pods, client and
// server pinned to the same CPU.
func (b *bench) sockperfRR(ctx context.Context, s *setup) (rrResult, error) {
	cpu := b.cfg.cpu
	ip := s.server.ip.String()
	srv, err := b.serve(ctx, s, rrPort, "taskset", "-c", cpu, "sockperf", "server", "--tcp", "-i", ip, "-p", strconv.Itoa(rrPort))
	if err != nil {
		return rrResult{}, err
	}
	defer srv.stop()
	cl, err := b.start(s.client, "taskset", "-c", cpu, "sockperf", "ping-pong", "--tcp", "-i", ip, "-p", strconv.Itoa(rrPort),
		"--msg-size", "14", "-t", strconv.Itoa(b.cfg.rrSeconds), "--full-rtt")
	if err != nil {
		return rrResult{}, err
	}
	if err := cl.wait(ctx, time.Duration(b.cfg.rrSeconds+20)*time.Second); err != nil {
		return rrResult{}, fmt.Errorf("sockperf ping-pong %s: %v\n%s", s.name, err, cl.out)
	}
	return parseSockperf(cl.out.String())
}

var (
	ansiRE      = regexp.MustCompile(`\x1b\[[0-9;]*m`)
	validRE     = regexp.MustCompile(`\[Valid Duration\] RunTime=([0-9.]+) sec; SentMessages=(\d+); ReceivedMessages=(\d+)`)
	percentileR = regexp.MustCompile(`percentile (\d+\.\d+) =\s+([0-9.]+)`)
)

// parseSockperf reads a sockperf ping-pong report (run with --full-rtt).
func parseSockperf(out string) (rrResult, error) {
	out = ansiRE.ReplaceAllString(out, "")
	m := validRE.FindStringSubmatch(out)
	if m == nil {
		return rrResult{}, fmt.Errorf("no [Valid Duration] line in sockperf output:\n%s", out)
	}
	secs, _ := strconv.ParseFloat(m[1], 64)
	recv, _ := strconv.ParseFloat(m[3], 64)
	if secs <= 0 || recv <= 0 {
		return rrResult{}, fmt.Errorf("sockperf measured nothing:\n%s", out)
	}
	r := rrResult{perSec: recv / secs}
	for _, pm := range percentileR.FindAllStringSubmatch(out, -1) {
		v, _ := strconv.ParseFloat(pm[2], 64)
		switch pm[1] {
		case "50.000":
			r.p50 = v
		case "99.000":
			r.p99 = v
		}
	}
	return r, nil
}

// tputResult is one iperf3 run.
type tputResult struct {
	gbps    float64
	retrans int
}

// iperf runs one TCP stream from client to server for the configured time
// (after one omitted second of slow start), on both CPUs.
func (b *bench) iperf(ctx context.Context, s *setup) (tputResult, error) {
	ip := s.server.ip.String()
	srv, err := b.serve(ctx, s, tputPort, "iperf3", "--server", "--one-off", "--bind", ip, "--port", strconv.Itoa(tputPort))
	if err != nil {
		return tputResult{}, err
	}
	defer srv.stop()
	cl, err := b.start(s.client, "iperf3", "--client", ip, "--port", strconv.Itoa(tputPort),
		"--time", strconv.Itoa(b.cfg.tputSeconds), "--omit", "1", "--json")
	if err != nil {
		return tputResult{}, err
	}
	if err := cl.wait(ctx, time.Duration(b.cfg.tputSeconds+20)*time.Second); err != nil {
		return tputResult{}, fmt.Errorf("iperf3 %s: %v\n%s", s.name, err, cl.out)
	}
	return parseIperf(cl.out.Bytes())
}

// parseIperf reads iperf3's --json report.
func parseIperf(out []byte) (tputResult, error) {
	var rep struct {
		Error string `json:"error"`
		End   struct {
			SumSent struct {
				Retransmits int `json:"retransmits"`
			} `json:"sum_sent"`
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &rep); err != nil {
		return tputResult{}, fmt.Errorf("iperf3 output: %v\n%s", err, out)
	}
	if rep.Error != "" {
		return tputResult{}, fmt.Errorf("iperf3: %s", rep.Error)
	}
	if rep.End.SumReceived.BitsPerSecond <= 0 {
		return tputResult{}, fmt.Errorf("iperf3 measured nothing:\n%s", out)
	}
	return tputResult{gbps: rep.End.SumReceived.BitsPerSecond / 1e9, retrans: rep.End.SumSent.Retransmits}, nil
}

// trafficResult holds every run of every setup.
type trafficResult struct {
	rrReps, rrSeconds     int
	tputReps, tputSeconds int
	cpu                   string
	order                 []string
	rr                    map[string][]rrResult
	tput                  map[string][]tputResult
	checks                []string
}

// benchTraffic checks that each setup's pods reach each other, then runs
// the request/response and throughput measurements, rotating the order of
// the setups from one repetition to the next.
func (b *bench) benchTraffic(ctx context.Context, setups []*setup) *trafficResult {
	res := &trafficResult{rrReps: b.cfg.rrReps, rrSeconds: b.cfg.rrSeconds, tputReps: b.cfg.tputReps, tputSeconds: b.cfg.tputSeconds, cpu: b.cfg.cpu,
		rr: map[string][]rrResult{}, tput: map[string][]tputResult{}}
	for _, s := range setups {
		res.order = append(res.order, s.name)
		pr, err := b.start(s.client, "ping", "-c", "2", "-i", "0.2", "-W", "1", s.server.ip.String())
		if err != nil {
			b.t.Fatal(err)
		}
		if err := pr.wait(ctx, 10*time.Second); err != nil {
			b.t.Fatalf("%s: %s cannot ping %s: %v\n%s", s.name, s.client.ip, s.server.ip, err, pr.out)
		}
		res.checks = append(res.checks, fmt.Sprintf("ok: %s pods %s -> %s answer ping", s.name, s.client.ip, s.server.ip))
	}
	for rep := range max(b.cfg.rrReps, b.cfg.tputReps) {
		for i := range setups {
			if rep >= b.cfg.rrReps {
				break
			}
			s := setups[(i+rep)%len(setups)]
			r, err := b.sockperfRR(ctx, s)
			if err != nil {
				b.t.Fatal(err)
			}
			b.logf("traffic: run %d %-6s RR %.0f/s, RTT p50 %.1f µs", rep+1, s.name, r.perSec, r.p50)
			res.rr[s.name] = append(res.rr[s.name], r)
		}
		for i := range setups {
			if rep >= b.cfg.tputReps {
				break
			}
			s := setups[(i+rep)%len(setups)]
			r, err := b.iperf(ctx, s)
			if err != nil {
				b.t.Fatal(err)
			}
			b.logf("traffic: run %d %-6s TCP %.2f Gbit/s (%d retransmits)", rep+1, s.name, r.gbps, r.retrans)
			res.tput[s.name] = append(res.tput[s.name], r)
		}
	}
	return res
}

func (r *trafficResult) medians(name string) (rr, p50, p99, gbps float64) {
	var a, b, c, d []float64
	for _, x := range r.rr[name] {
		a, b, c = append(a, x.perSec), append(b, x.p50), append(c, x.p99)
	}
	for _, x := range r.tput[name] {
		d = append(d, x.gbps)
	}
	return stats.Median(a), stats.Median(b), stats.Median(c), stats.Median(d)
}

func (r *trafficResult) rows() [][]string {
	arr, ap50, ap99, ag := r.medians("anet")
	vrr, vp50, vp99, vg := r.medians("veth")
	brr, bp50, bp99, bg := r.medians("bridge")
	return [][]string{
		{"TCP request/response (sockperf ping-pong)", num(arr) + "/s", num(vrr) + "/s", num(brr) + "/s", ratio(arr, vrr), ratio(arr, brr)},
		{"round-trip time p50", num(ap50) + " µs", num(vp50) + " µs", num(bp50) + " µs", ratio(ap50, vp50), ratio(ap50, bp50)},
		{"round-trip time p99", num(ap99) + " µs", num(vp99) + " µs", num(bp99) + " µs", ratio(ap99, vp99), ratio(ap99, bp99)},
		{"TCP throughput, one stream (iperf3)", num(ag) + " Gbit/s", num(vg) + " Gbit/s", num(bg) + " Gbit/s", ratio(ag, vg), ratio(ag, bg)},
	}
}

// runsRow lists every run of one metric, for the reader to judge spread.
func (r *trafficResult) runs() [][]string {
	var out [][]string
	for _, name := range []string{"anet", "veth", "bridge"} {
		var rr, tp []string
		for _, x := range r.rr[name] {
			rr = append(rr, num(x.perSec))
		}
		for _, x := range r.tput[name] {
			tp = append(tp, fmt.Sprintf("%s (%d retr.)", num(x.gbps), x.retrans))
		}
		out = append(out, []string{name, strings.Join(rr, ", "), strings.Join(tp, ", ")})
	}
	return out
}
