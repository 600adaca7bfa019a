package main

import (
	"fmt"
	"math"
	"path/filepath"
	"strings"
	"time"

	"github.com/anet-dev/anet/bench/internal/stats"
)

// The services section's part of results.md.

// svcProxies are the three proxies in the report's order, with their
// names in it.
var svcProxies = []struct{ key, title string }{
	{"anet", "anet"},
	{"iptables", "kube-proxy iptables"},
	{"nftables", "kube-proxy nftables"},
}

// pct is the p-th percentile of a setup's connects at point p, µs.
func (p *svcPoint) pct(setup string, q float64) float64 {
	return stats.Percentile(micros(p.lat[setup]), q)
}

// nodeOf is the node that serves a proxy's clients.
func (r *svcResult) nodeOf(proxy string) string {
	for _, n := range r.nodes {
		if n.proxy == proxy {
			return n.node
		}
	}
	return ""
}

func secs(d time.Duration) string {
	if d <= 0 {
		return "n/a"
	}
	return num(d.Seconds()) + " s"
}

// short is a duration that may be about zero, in seconds.
func short(d time.Duration) string {
	if d < 10*time.Millisecond {
		return "< 0.01 s"
	}
	return secs(d)
}

func mib(kb int64) string {
	if kb <= 0 {
		return "n/a"
	}
	return num(float64(kb)/1024) + " MiB"
}

// target renders a ratio against its goal.
func target(x, goal float64, atMost bool) string {
	switch {
	case math.IsNaN(x):
		return "not measured"
	case atMost && x <= goal, !atMost && x >= goal:
		return "**met**"
	default:
		return "**not met**"
	}
}

func (r *svcResult) markdown() string {
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	c := r.cfg
	anetNode := r.nodeOf("anet")
	if r.began != "" {
		w("This section started %s, at a load average (1, 5, 15 min) of %s.\n\n", r.began, r.loadStart)
	}
	w("A 3-node lab (real kubelets, containerd, control plane) in which each node has one service proxy: "+
		"**anet** on %s (anetd's socket-level hooks at the node's cgroup subtree translate `connect()` to a backend), "+
		"**kube-proxy iptables** on %s and **kube-proxy nftables** on %s (the real kube-proxy %s, built with the lab's other Kubernetes binaries, "+
		"beside an anetd started with `--enable-services=false`, which leaves Service traffic to the node's netfilter). "+
		"The three serve the same Services: selectorless ClusterIP Services (port %d → %d) made through the API, each with an EndpointSlice of its own "+
		"(`managed-by: %s`) holding %d ready endpoints: the backend pods of one node, node by node in turn, so that every node's client "+
		"reaches only backends of its own node. Each backend pod runs the bench's accept loop; the client pod runs the bench's connect loop "+
		"(`lab.ExecCmd`: the pod's netns and cgroup, so that anet's hooks see it, as they see the pod's own processes), "+
		"client and every server pinned to CPU %s with `taskset`. A connect is one blocking `connect()` (socket made before, "+
		"closed after with an RST, outside the timer), to the ClusterIPs of %d Services of the node's share in turn (spread over it: "+
		"kube-proxy's iptables chain holds the Services in no fixed order), or, **direct**, to the backends' pod addresses: the limit. On anet's node the client alternates, connect by connect, "+
		"between a ClusterIP and a backend, so that the two are paired sample by sample. On the kube-proxy nodes the direct connects come from "+
		"another pod of the node: beside a kube-proxy, a direct connection from the proxy's client could reuse the source port of an earlier one "+
		"through a ClusterIP whose conntrack entry (closed, kept 10 s) netfilter still holds (anet handed such a reply to the host stack, which "+
		"reverse-translated it and the connect failed, until `netfilter_translated` in bpf/lxc.c counted only live entries; found by this benchmark). "+
		"For each number of Services, made fresh: %d runs of %d connects per setup, the five kinds of run (anet paired with direct, and per kube-proxy "+
		"mode one through it and one direct) rotating run by run; percentiles are over every connect of the runs. Lower is better.\n\n",
		anetNode, r.nodeOf("iptables"), r.nodeOf("nftables"), r.kpVersion, svcPort, svcTarget, svcManagedBy, c.backends,
		r.cpu, r.probed(), c.reps, c.connects)

	direct := directKey(anetNode)
	for _, q := range []float64{50, 99} {
		w("**connect() latency, p%.0f (µs)**\n\n", q)
		var rows [][]string
		for _, p := range r.points {
			a, ip, nf, d := p.pct("anet", q), p.pct("iptables", q), p.pct("nftables", q), p.pct(direct, q)
			rows = append(rows, []string{num(float64(p.n)), num(a), num(ip), num(nf), num(d),
				ratio(a, d), ratio(ip, a), ratio(nf, a)})
		}
		w("%s\n", table([]string{"Services", "anet", "kube-proxy iptables", "kube-proxy nftables", "direct (" + anetNode + ")",
			"anet / direct", "iptables / anet", "nftables / anet"}, rows))
	}
	w("Each proxy against a direct connect from its own node's client (p50): ")
	var parts []string
	for _, p := range r.points {
		var per []string
		for _, x := range svcProxies {
			per = append(per, fmt.Sprintf("%s %s", x.key, ratio(p.pct(x.key, 50), p.pct(directKey(r.nodeOf(x.key)), 50))))
		}
		parts = append(parts, fmt.Sprintf("%s Services: %s", num(float64(p.n)), strings.Join(per, ", ")))
	}
	w("%s.\n\n", strings.Join(parts, "; "))

	if len(r.points) > 0 {
		lo, hi := r.points[0], r.points[len(r.points)-1]
		x := func(a, b float64) float64 { return stats.Ratio(a, b) }
		rows := [][]string{
			{fmt.Sprintf("anet / direct, p50, at %s Services", num(float64(hi.n))), "≤ 1.05×",
				ratio(hi.pct("anet", 50), hi.pct(direct, 50)), target(x(hi.pct("anet", 50), hi.pct(direct, 50)), 1.05, true)},
			{fmt.Sprintf("anet at %s / anet at %s Services, p50", num(float64(hi.n)), num(float64(lo.n))), "≤ 1.05×",
				ratio(hi.pct("anet", 50), lo.pct("anet", 50)), target(x(hi.pct("anet", 50), lo.pct("anet", 50)), 1.05, true)},
			{"the same, each over the direct connect at its count (load moves between counts; this does not)", "≤ 1.05×",
				ratio(x(hi.pct("anet", 50), hi.pct(direct, 50)), x(lo.pct("anet", 50), lo.pct(direct, 50))),
				target(x(x(hi.pct("anet", 50), hi.pct(direct, 50)), x(lo.pct("anet", 50), lo.pct(direct, 50))), 1.05, true)},
			{fmt.Sprintf("iptables / anet, p50, at %s Services", num(float64(hi.n))), "≥ 2×",
				ratio(hi.pct("iptables", 50), hi.pct("anet", 50)), target(x(hi.pct("iptables", 50), hi.pct("anet", 50)), 2, false)},
			{fmt.Sprintf("anet / direct, p99, at %s Services (no target)", num(float64(hi.n))), "",
				ratio(hi.pct("anet", 99), hi.pct(direct, 99)), ""},
			{fmt.Sprintf("iptables / anet, p99, at %s Services (no target)", num(float64(hi.n))), "",
				ratio(hi.pct("iptables", 99), hi.pct("anet", 99)), ""},
		}
		w("**Targets (issue 8)**\n\n%s\n", table([]string{"ratio", "target", "measured", ""}, rows))
	}

	if len(r.plots) > 0 {
		for _, f := range r.plots {
			w("![%s](%s)\n\n", strings.TrimSuffix(filepath.Base(f), ".png"), filepath.Base(f))
		}
	} else if r.plotErr != nil {
		w("Plots not written: %v\n\n", r.plotErr)
	}

	w("**Programming time**: from the first create of the Services and EndpointSlices (%d requests in flight, one client; "+
		"each slice stamped with `endpoints.kubernetes.io/last-change-trigger-time` as the EndpointSlice controller stamps its own) "+
		"to the first poll, once the last create has returned, that finds every one served with all %d endpoints. "+
		"anet: the frontends that anetd's `/v1/services` reports written to its maps (`programmed`) with their active backends. "+
		"kube-proxy: the count of its `kubeproxy_network_programming_duration_seconds` histogram (its own network programming latency SLI, "+
		"one observation per stamped EndpointSlice change, made when the sync that wrote it has finished) grown by the number of slices; "+
		"then a dump of its rules confirms them: the Services' jumps from `KUBE-SERVICES` to a `KUBE-SVC-*` chain and those chains' jumps to `KUBE-SEP-*` "+
		"(`iptables-save -t nat`), or their elements in the `service-ips` map and `endpoint-*` jumps (`nft list table ip kube-proxy`); "+
		"the time that dump completed is given in brackets (a dump of 10 000 Services takes tens of seconds, so it is no timer). "+
		"Polls are at most every %s; ± is the time since the poll before, or since the last create. "+
		"The three proxies program the same creations at the same time, on the same two CPUs as the API server, etcd and the bench, "+
		"so kube-proxy's syncs also slow the creation itself.\n\n",
		c.workers, c.backends, pollEvery)
	var rows [][]string
	for _, p := range r.points {
		row := []string{num(float64(p.n)), secs(p.create)}
		for _, x := range svcProxies {
			cell := fmt.Sprintf("%s (± %s); %s after the last", secs(p.served[x.key]), short(p.step[x.key]), short(p.served[x.key]-p.create))
			if d, ok := p.dumped[x.key]; ok {
				cell += fmt.Sprintf(" [dump: %s]", secs(d))
			}
			row = append(row, cell)
		}
		rows = append(rows, row)
	}
	w("%s\n", table([]string{"Services", "all created", "anet", "kube-proxy iptables", "kube-proxy nftables"}, rows))
	rows = nil
	for _, p := range r.points {
		if len(p.dropped) == 0 {
			continue
		}
		rows = append(rows, []string{num(float64(p.n)), secs(p.dropped["anet"]), secs(p.dropped["iptables"]), secs(p.dropped["nftables"])})
	}
	if len(rows) > 0 {
		w("Deleting them again (before the next count): from the first delete to none served.\n\n%s\n",
			table([]string{"Services", "anet", "kube-proxy iptables", "kube-proxy nftables"}, rows))
	}

	w("**Resident memory** (VmRSS from `/proc/PID/status`, after the latency runs), with %d endpoints per Service:\n\n", c.backends)
	rows = nil
	n1, n2, n3 := r.nodeOf("anet"), r.nodeOf("iptables"), r.nodeOf("nftables")
	for _, p := range r.points {
		rows = append(rows, []string{fmt.Sprintf("%s (%s endpoints)", num(float64(p.n)), num(float64(p.n*c.backends))),
			mib(p.rss[n1+"/anetd"]), mib(p.rss[n2+"/anetd"]), mib(p.rss[n2+"/kube-proxy"]), mib(p.rss[n3+"/kube-proxy"])})
	}
	w("%s\n", table([]string{"Services", "anetd (" + n1 + ", serving them)", "anetd (" + n2 + ", services off)", "kube-proxy iptables", "kube-proxy nftables"}, rows))

	w("Every run (p50 of each run's connects, µs):\n\n")
	rows = nil
	for _, p := range r.points {
		for _, n := range r.nodes {
			for _, s := range []string{n.proxy, directKey(n.node)} {
				var v []string
				for _, x := range p.runs[s] {
					v = append(v, num(x))
				}
				rows = append(rows, []string{num(float64(p.n)), s, strings.Join(v, ", ")})
			}
		}
	}
	w("%s\n", table([]string{"Services", "setup", "runs"}, rows))
	w("Lab up in %s, down in %s. Load average (1, 5, 15 min) after each count's latency runs: %s.\n\n",
		secs(r.up), secs(r.down), strings.Join(r.loadAvgs, "; "))
	return b.String()
}

// probed is how many Services each client connected to.
func (r *svcResult) probed() int {
	for _, p := range r.points {
		return p.probed
	}
	return 0
}
