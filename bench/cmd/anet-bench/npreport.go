package main

import (
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/anet-dev/anet/bench/internal/stats"
)

// The netpol section's part of results.md.

// latPct is the q-th percentile of a pair's new connections, µs.
func (p *npPoint) latPct(pair string, q float64) float64 {
	return stats.Percentile(micros(p.lat[pair]), q)
}

// rateMed is the median of a pair's request/response runs, per second.
func (p *npPoint) rateMed(pair string) float64 { return stats.Median(p.rate[pair]) }

// msPct is the q-th percentile of durations, ms.
func msPct(ds []time.Duration, q float64) float64 { return stats.Percentile(stats.Millis(ds), q) }

func msCell(x float64) string {
	if math.IsNaN(x) {
		return "n/a"
	}
	return num(x) + " ms"
}

func (r *npResult) markdown() string {
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	c := r.cfg
	if r.began != "" {
		w("This section started %s, at a load average (1, 5, 15 min) of %s.\n\n", r.began, r.loadStart)
	}
	w("A 3-node lab of its own (real kubelets, containerd, control plane; anetd on every node enforcing NetworkPolicy). "+
		"**Measured pods** (namespace `%s`): a server on %s running the bench's echo loop on port %d, and two clients, one on %s (across nodes) "+
		"and one on %s (same node), all three isolated in both directions by one allowing policy (`allow-bench`: ingress from and egress to "+
		"every pod of the namespace; the server's anetd reports it programmed, and a pod of another namespace is refused). "+
		"**Rules** (namespace `%s`): policies of %d ingress rules each, rule *i* from a podSelector of its own (`rule NotIn [j-k]`, "+
		"which matches every pod there) on TCP port %d + 2*i* (no two adjacent, so no ranges are joined), selecting a pod on every node, "+
		"created through client-go (%d requests in flight); a count is reached when every node's anetd reports "+
		"its pod programmed with all of them (`/v1/policy`), so that every node's policy maps hold them. "+
		"%d runs per pair and count, the counts taking turns run by run, ascending then descending (the rules made or deleted in between, so that the machine's drift weighs on every count alike), the pairs alternating: **request/response**, one TCP connection, one-byte requests each waiting for its echo, "+
		"for %s s (after %d not counted), round trips per second; **new connection**, %d blocking `connect()`s each followed by one request and its echo "+
		"(timed together; socket made before, closed with an RST after, outside the timer). Client and server are this same binary run in the pods "+
		"(`lab.ExecCmd`), under `chrt --fifo 10 taskset -c %s`. Ratios are to 0 rules; target at most 1.05.\n\n",
		npNS, pairNode(r, true), npPort, pairNode(r, false), pairServer(r), npRulesNS, npRulesPer, npRulePort, c.workers,
		c.reps, num(c.seconds), rrWarmup, c.connects, r.cpu)

	var base *npPoint
	if len(r.points) > 0 && r.points[0].rules == 0 {
		base = r.points[0]
	}
	rel := func(x float64, f func(*npPoint) float64) string {
		if base == nil {
			return "n/a"
		}
		return ratio(x, f(base))
	}
	var rows [][]string
	for _, p := range r.points {
		row := []string{intNum(p.rules), secs(p.programmed)}
		for _, pr := range r.pairs {
			x := p.rateMed(pr.name)
			row = append(row, num(x), rel(x, func(q *npPoint) float64 { return q.rateMed(pr.name) }))
		}
		var cpu []string
		for _, x := range p.anetd {
			cpu = append(cpu, fmt.Sprintf("%.0f %%", 100*x))
		}
		rows = append(rows, append(row, strings.Join(cpu, ", "), strings.Join(p.loads, "; ")))
	}
	hdr := []string{"rules", "programmed on every node"}
	for _, pr := range r.pairs {
		hdr = append(hdr, "rate, "+pr.name+" (per s)", "/ 0 rules")
	}
	w("**Request/response rate** (median of the runs; higher is better). The anetd CPU column is the CPU time the three nodes' anetds used "+
		"during each run of both pairs over its wall time (100 %% is one of the machine's CPUs): what the rules cost the machine beside the packets, "+
		"since the client and server share its CPUs with them.\n\n%s\n", table(append(hdr, "anetd CPU, 3 nodes, each run", "load after each run"), rows))

	for _, q := range []float64{50, 99} {
		rows = nil
		for _, p := range r.points {
			row := []string{intNum(p.rules)}
			for _, pr := range r.pairs {
				x := p.latPct(pr.name, q)
				row = append(row, num(x), rel(x, func(b *npPoint) float64 { return b.latPct(pr.name, q) }))
			}
			rows = append(rows, row)
		}
		hdr := []string{"rules"}
		for _, pr := range r.pairs {
			hdr = append(hdr, pr.name+" (µs)", "/ 0 rules")
		}
		w("**New connection and one request, p%.0f** (lower is better)\n\n%s\n", q, table(hdr, rows))
	}

	if base != nil && len(r.points) > 1 {
		rows = nil
		for _, p := range r.points[1:] {
			for _, pr := range r.pairs {
				// Rate: 0 rules over n rules, so that above 1 is slower for every row.
				rr := stats.Ratio(base.rateMed(pr.name), p.rateMed(pr.name))
				l50 := stats.Ratio(p.latPct(pr.name, 50), base.latPct(pr.name, 50))
				rows = append(rows,
					[]string{fmt.Sprintf("rate at 0 / at %s rules, %s", intNum(p.rules), pr.name), "≤ 1.05×", ratio(base.rateMed(pr.name), p.rateMed(pr.name)), target(rr, 1.05, true)},
					[]string{fmt.Sprintf("new connection p50 at %s / at 0 rules, %s", intNum(p.rules), pr.name), "≤ 1.05×", ratio(p.latPct(pr.name, 50), base.latPct(pr.name, 50)), target(l50, 1.05, true)})
			}
		}
		w("**Targets (issue 9)** (each a slowdown: above 1 is slower with the rules)\n\n%s\n", table([]string{"ratio", "target", "measured", ""}, rows))
	}

	rows = nil
	for _, p := range r.points {
		for _, pr := range r.pairs {
			var v []string
			for _, x := range p.rate[pr.name] {
				v = append(v, num(x))
			}
			rows = append(rows, []string{intNum(p.rules), pr.name, strings.Join(v, ", ")})
		}
	}
	w("Every request/response run (round trips per second, in the order run):\n\n%s\n", table([]string{"rules", "pair", "runs"}, rows))

	if len(r.enf) > 0 {
		w("**Enforcement time**, with the fewest rules of the section in the cluster and with the most (in the first round of runs). Namespace `%s`: on every node a target pod "+
			"(anet-testserver's TCP echo, port %d) held by a default-deny ingress policy, and a prober pod probing the target of the next node "+
			"in a loop of new connections (each given %d ms; a refused or unanswered connection is followed by the next at once, an established one after 5 ms), "+
			"reporting each change of verdict: through at the first probe that connects, refused after %d failures in a row (at the first of them). "+
			"Each policy allows the probers into the targets; the time is from its create call to the start of the last node's first probe "+
			"that got through (the node of the target judges the ingress, so each node enforces it once); then it is deleted, and the time is "+
			"from the delete call until every prober is refused again (the next policy only once they all are). "+
			"The resolution is the time between a prober's probe that saw the change and the one before (its p50 and max are given), "+
			"the probes' own start at most a few ms. Lower is better.\n\n",
			npEnfNS, npEnfPort, r.enf[0].timeoutMS, watchDenied)
		var rows [][]string
		for _, e := range r.enf {
			rules := intNum(e.rules) + " rules"
			rows = append(rows,
				[]string{rules, "create → enforced on every node", msCell(msPct(e.applied, 50)), msCell(msPct(e.applied, 99)), msCell(msPct(e.applied, 100)), intNum(len(e.applied))},
				[]string{rules, "delete → refused on every node", msCell(msPct(e.removed, 50)), msCell(msPct(e.removed, 99)), msCell(msPct(e.removed, 100)), intNum(len(e.removed))})
			for _, n := range slices.Sorted(maps.Keys(e.perNode)) {
				ds := e.perNode[n]
				rows = append(rows, []string{rules, "create → enforced on " + n, msCell(msPct(ds, 50)), msCell(msPct(ds, 99)), msCell(msPct(ds, 100)), intNum(len(ds))})
			}
			rows = append(rows, []string{rules, "resolution (probe step)", msCell(msPct(e.steps, 50)), msCell(msPct(e.steps, 99)), msCell(msPct(e.steps, 100)), intNum(len(e.steps))})
		}
		w("%s\n", table([]string{"in the cluster", "", "p50", "p99", "max", "policies"}, rows))
		var loads []string
		for _, e := range r.enf {
			loads = append(loads, fmt.Sprintf("%s rules: %s", intNum(e.rules), e.load))
		}
		w("Load average (1, 5, 15 min) after each: %s.\n\n", strings.Join(loads, "; "))
	}
	w("Lab up in %s, down in %s.\n\n", secs(r.up), secs(r.down))
	return b.String()
}

func pairNode(r *npResult, server bool) string {
	for _, p := range r.pairs {
		if p.clientNode != p.serverNode {
			if server {
				return p.serverNode
			}
			return p.clientNode
		}
	}
	return "?"
}

func pairServer(r *npResult) string {
	for _, p := range r.pairs {
		if p.clientNode == p.serverNode {
			return p.clientNode
		}
	}
	return "?"
}

// intNum is a count: whole, thousands separated as num does from 10 000.
func intNum(n int) string {
	if n < 10000 {
		return fmt.Sprint(n)
	}
	return num(float64(n))
}
